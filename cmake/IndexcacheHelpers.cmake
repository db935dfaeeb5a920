# Helpers that keep each target to a few lines.

# ic_library(NAME SRCS a.cc b.cc DEPS x y): a static, position-independent library rooted at the repo.
function(ic_library name)
  cmake_parse_arguments(A "" "" "SRCS;DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SRCS})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/include
                                            ${PROJECT_BINARY_DIR})
  target_link_libraries(${name} PUBLIC ${A_DEPS})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
endfunction()

# ic_test(NAME SRCS a_test.cc DEPS lib LABELS cpu): a GoogleTest binary registered with CTest.
function(ic_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  if(NOT IC_BUILD_TESTS)
    return()
  endif()
  add_executable(${name} ${A_SRCS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE IC_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  if(NOT A_LABELS)
    set(A_LABELS cpu)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 600)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT})
endfunction()

# ic_glob_tests(DIR DEPS libs LABELS l): one test binary per `<DIR>/*_test.cc`.
function(ic_glob_tests dir)
  cmake_parse_arguments(A "" "" "DEPS;LABELS" ${ARGN})
  file(GLOB tests CONFIGURE_DEPENDS ${dir}/*_test.cc)
  foreach(src ${tests})
    get_filename_component(name ${src} NAME_WE)
    ic_test(${name} SRCS ${src} DEPS ${A_DEPS} LABELS ${A_LABELS})
  endforeach()
endfunction()

# ic_glob_sources(VAR DIR): the non-test .cc files of DIR.
function(ic_glob_sources var dir)
  file(GLOB srcs CONFIGURE_DEPENDS ${dir}/*.cc)
  list(FILTER srcs EXCLUDE REGEX "_test\\.cc$|_bench\\.cc$")
  set(${var} ${srcs} PARENT_SCOPE)
endfunction()
