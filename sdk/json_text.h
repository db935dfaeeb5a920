// A JSON value as a short string for error messages, without recursion: scalars as JSON (cut at
// `max_chars`), arrays and objects of scalars likewise, deeper ones as "an array of 3 entries" — so that a
// hostile file (100,000 nested brackets) cannot overflow the stack or flood the message.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"

namespace ic {

template <typename Json>
std::string JsonForMessage(const Json& v, size_t max_chars = 80) {
  auto cut = [max_chars](std::string s) {
    if (s.size() > max_chars) s = s.substr(0, max_chars) + "…";
    return s;
  };
  if (!v.is_structured()) return cut(v.dump());
  for (const auto& e : v) {
    if (e.is_structured()) {
      return absl::StrCat(v.is_array() ? "an array of " : "an object of ", v.size(),
                          v.is_array() ? " entries" : " keys", " (nested)");
    }
  }
  return cut(v.dump());  // one level of scalars: dump() recurses once
}

}  // namespace ic
