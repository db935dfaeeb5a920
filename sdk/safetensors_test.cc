#include "sdk/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace ic {
namespace {

using ::testing::HasSubstr;

// Copies of shared/golden and shared/reference live in tests/data (see tests/data/golden/SOURCE.md).
std::string SharedDir() {
  const char* env = std::getenv("IC_TEST_DATA");  // binaries run away from their source tree
  return env != nullptr ? env : IC_SOURCE_DIR "/tests/data";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    dir_ = std::string(tmp != nullptr ? tmp : "/tmp") + "/ic_safetensors_test_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A file with the given header length field, header text and data bytes.
  std::string WriteRaw(const std::string& name, uint64_t header_len, const std::string& header, size_t data_bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(header_len >> (8 * i)));
    out << header;
    out << std::string(data_bytes, '\0');
    return path;
  }
  std::string WriteHeader(const std::string& name, const std::string& header, size_t data_bytes) {
    return WriteRaw(name, header.size(), header, data_bytes);
  }

  std::string ErrorOpening(const std::string& path, absl::StatusCode code = absl::StatusCode::kInvalidArgument) {
    absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(path);
    EXPECT_FALSE(store.ok()) << path;
    if (store.ok()) return "";
    EXPECT_EQ(store.status().code(), code) << store.status();
    return std::string(store.status().message());
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripF32AndBf16) {
  const std::string path = dir_ + "/model.safetensors";
  std::vector<TensorToWrite> tensors = {
      {"a.weight", DType::kF32, {2, 3}, {1, -2, 3.5f, 0, 1e-30f, -7}},
      {"b.bias", DType::kBF16, {3}, {1.0f, 1.0078125f, -3.140625f}},
      {"empty", DType::kF32, {0, 4}, {}},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());

  // Header padded so the data starts 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);

  for (const std::string& open_path : {path, dir_}) {  // the file, and its directory
    absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(open_path);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->tensors().size(), 3u);  // __metadata__ skipped
    const TensorInfo* a = (*store)->Find("a.weight");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->dtype, DType::kF32);
    EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(a->nbytes, 24u);
    EXPECT_EQ(a->numel(), 6);
    EXPECT_EQ(a->file, path);
    EXPECT_EQ(*(*store)->ReadF32(*a), tensors[0].data);
    const TensorInfo* b = (*store)->Find("b.bias");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->dtype, DType::kBF16);
    EXPECT_EQ(*(*store)->ReadF32(*b), tensors[1].data);  // exactly representable in BF16
    EXPECT_EQ((*store)->ReadF32(*(*store)->Find("empty"))->size(), 0u);
    EXPECT_EQ((*store)->Find("missing"), nullptr);
  }
}

TEST_F(SafetensorsTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(1.00390625f), 0x3f80);    // halfway, tie to even (down)
  EXPECT_EQ(FloatToBf16(1.01171875f), 0x3f82);    // halfway, tie to even (up)
  EXPECT_EQ(FloatToBf16(1.0048828125f), 0x3f81);  // above halfway
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16(INFINITY), 0x7f80);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_EQ(Bf16ToFloat(0x4049), 3.140625f);
}

TEST_F(SafetensorsTest, ReadsF16AndBlockScaledF8) {
  // F16 [3]: 1.0 (0x3c00), -2.5 (0xc100), smallest subnormal (0x0001).
  // F8_E4M3 [2, 130]: byte 0x38 = 1.0, 0x40 = 2.0; scale_inv F32 [1, 2] = {0.5, 4}.
  const std::string header = R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},)"
                             R"("w.weight":{"dtype":"F8_E4M3","shape":[2,130],"data_offsets":[8,268]},)"
                             R"("w.weight_scale_inv":{"dtype":"F32","shape":[1,2],"data_offsets":[272,280]},)"
                             R"("i":{"dtype":"I32","shape":[1],"data_offsets":[280,284]}})";
  const std::string path = dir_ + "/x.safetensors";
  {
    std::ofstream out(path, std::ios::binary);
    const uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header;
    std::string data(284, '\0');
    const uint16_t h[3] = {0x3c00, 0xc100, 0x0001};
    std::memcpy(&data[0], h, 6);
    for (int i = 0; i < 260; ++i) data[8 + i] = static_cast<char>(i % 2 == 0 ? 0x38 : 0xc0);  // 1.0, -2.0
    const float s[2] = {0.5f, 4.0f};
    std::memcpy(&data[272], s, 8);
    out << data;
  }
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<float> h = *(*store)->ReadF32(*(*store)->Find("h"));
  EXPECT_EQ(h, (std::vector<float>{1.0f, -2.5f, std::ldexp(1.0f, -24)}));
  std::vector<float> w = *(*store)->ReadF32(*(*store)->Find("w.weight"));
  ASSERT_EQ(w.size(), 260u);
  EXPECT_EQ(w[0], 0.5f);           // row 0, col 0: 1.0 · 0.5
  EXPECT_EQ(w[1], -1.0f);          // -2.0 · 0.5
  EXPECT_EQ(w[128], 4.0f);         // col 128 is in the second column block: 1.0 · 4
  EXPECT_EQ(w[130 + 129], -8.0f);  // row 1, col 129
  absl::StatusOr<std::vector<float>> i = (*store)->ReadF32(*(*store)->Find("i"));
  ASSERT_FALSE(i.ok());
  EXPECT_THAT(std::string(i.status().message()), HasSubstr("tensor \"i\": dtype I32 cannot be read as F32"));
}

// C10: broken files, each a clear error naming the file and the tensor.
TEST_F(SafetensorsTest, C10HeaderLengthLargerThanTheFile) {
  const std::string path =
      WriteRaw("big.safetensors", 1 << 20, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  EXPECT_THAT(ErrorOpening(path), HasSubstr(path + ": header length 1048576 is larger than the file"));
  const std::string huge = WriteRaw("huge.safetensors", ~0ull, "{}", 0);
  EXPECT_THAT(ErrorOpening(huge), HasSubstr("is larger than the file"));
}

TEST_F(SafetensorsTest, C10DataOffsetsPastTheData) {
  const std::string path =
      WriteHeader("model.safetensors", R"({"x.weight":{"dtype":"F32","shape":[32,32],"data_offsets":[0,4096]}})", 2048);
  EXPECT_THAT(ErrorOpening(path),
              HasSubstr(path + ": tensor \"x.weight\": data_offsets end 4096 past the data (2048 bytes)"));
}

TEST_F(SafetensorsTest, C10TwoTensorsOverlapping) {
  const std::string path = WriteHeader("o.safetensors",
                                       R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                       R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                                       24);
  const std::string err = ErrorOpening(path);
  EXPECT_THAT(err, HasSubstr(path + ": tensor \"b\""));
  EXPECT_THAT(err, HasSubstr("overlap tensor \"a\""));
}

TEST_F(SafetensorsTest, C10Bf16ByteLengthDoesNotMatchShape) {
  const std::string path =
      WriteHeader("m.safetensors", R"({"w":{"dtype":"BF16","shape":[3,5],"data_offsets":[0,32]}})", 32);
  EXPECT_THAT(ErrorOpening(path),
              HasSubstr(path + ": tensor \"w\": byte length 32 does not match shape [3,5] of BF16 (30 bytes)"));
}

TEST_F(SafetensorsTest, TruncatedAndNonJsonFiles) {
  const std::string empty = WriteRaw("empty.safetensors", 0, "", 0);
  std::filesystem::resize_file(empty, 0);
  EXPECT_THAT(ErrorOpening(empty), HasSubstr(empty + ": file is 0 bytes"));
  const std::string short_file = WriteRaw("short.safetensors", 0, "", 0);
  std::filesystem::resize_file(short_file, 5);
  EXPECT_THAT(ErrorOpening(short_file), HasSubstr("file is 5 bytes, too short"));

  // A valid file cut in the middle of its data.
  const std::string cut = dir_ + "/cut.safetensors";
  ASSERT_TRUE(WriteSafetensors(cut, {{"t", DType::kF32, {64}, std::vector<float>(64, 1.0f)}}).ok());
  std::filesystem::resize_file(cut, std::filesystem::file_size(cut) - 100);
  EXPECT_THAT(ErrorOpening(cut), HasSubstr(cut + ": tensor \"t\": data_offsets end 256 past the data"));
  // ... and in the middle of its header.
  std::filesystem::resize_file(cut, 20);
  EXPECT_THAT(ErrorOpening(cut), HasSubstr("is larger than the file"));

  const std::string garbage = WriteHeader("g.safetensors", "this is not json", 0);
  EXPECT_THAT(ErrorOpening(garbage), HasSubstr(garbage + ": header is not valid JSON"));
  const std::string array = WriteHeader("a.safetensors", "[1,2]", 0);
  EXPECT_THAT(ErrorOpening(array), HasSubstr("expected an object"));
}

TEST_F(SafetensorsTest, BadEntries) {
  struct Case {
    std::string header;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {R"({"t":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}})", "tensor \"t\": dtype \"F4\" is not supported"},
      {R"({"t":{"shape":[1],"data_offsets":[0,4]}})", "tensor \"t\": missing or non-string dtype"},
      {R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "tensor \"t\": shape [-1] has an entry"},
      {R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "tensor \"t\": shape [1.5]"},
      {R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", "tensor \"t\": missing shape"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4]}})", "tensor \"t\": data_offsets must be [begin, end]"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "tensor \"t\": data_offsets must be"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
       "tensor \"t\": data_offsets begin 8 is after end 4"},
      {R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})",
       "tensor \"t\": shape"},
      {R"({"t":[1,2]})", "tensor \"t\": entry is [1,2]; expected an object"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = WriteHeader("bad" + std::to_string(i) + ".safetensors", cases[i].header, 16);
    EXPECT_THAT(ErrorOpening(path), HasSubstr(path + ": " + cases[i].expect)) << cases[i].header;
  }
}

void WriteIndex(const std::string& dir, const std::string& weight_map) {
  std::ofstream out(dir + "/model.safetensors.index.json");
  out << R"({"metadata": {"total_size": 0}, "weight_map": )" << weight_map << "}";
}

TEST_F(SafetensorsTest, ShardedIndex) {
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00001-of-00002.safetensors", {{"a", DType::kF32, {2}, {1, 2}}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00002-of-00002.safetensors", {{"b", DType::kBF16, {1}, {3}}}).ok());
  WriteIndex(dir_, R"({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir_);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->tensors().size(), 2u);
  EXPECT_EQ(*(*store)->ReadF32(*(*store)->Find("a")), (std::vector<float>{1, 2}));
  EXPECT_EQ(*(*store)->ReadF32(*(*store)->Find("b")), (std::vector<float>{3}));
  EXPECT_EQ((*store)->Find("b")->file, dir_ + "/model-00002-of-00002.safetensors");
}

TEST_F(SafetensorsTest, ShardedIndexWithAMissingShard) {
  ASSERT_TRUE(WriteSafetensors(dir_ + "/model-00001-of-00002.safetensors", {{"a", DType::kF32, {2}, {1, 2}}}).ok());
  WriteIndex(dir_, R"({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
  EXPECT_THAT(ErrorOpening(dir_, absl::StatusCode::kNotFound),
              HasSubstr(dir_ + "/model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json"));
}

TEST_F(SafetensorsTest, ShardedIndexErrors) {
  ASSERT_TRUE(WriteSafetensors(dir_ + "/s1.safetensors", {{"a", DType::kF32, {1}, {1}}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir_ + "/s2.safetensors", {{"a", DType::kF32, {1}, {2}}}).ok());
  WriteIndex(dir_, R"({"a": "s1.safetensors", "x": "s2.safetensors"})");
  EXPECT_THAT(ErrorOpening(dir_), HasSubstr("tensor \"a\" appears in both"));

  WriteIndex(dir_, R"({"a": "s1.safetensors", "b": "s1.safetensors"})");
  EXPECT_THAT(ErrorOpening(dir_), HasSubstr("tensor \"b\" listed in model.safetensors.index.json is not in it"));

  WriteIndex(dir_, R"({"a": "../s1.safetensors"})");
  EXPECT_THAT(ErrorOpening(dir_), HasSubstr("expected a file inside the directory"));

  WriteIndex(dir_, R"({"a": 3})");
  EXPECT_THAT(ErrorOpening(dir_), HasSubstr("weight_map[\"a\"] is 3"));

  std::ofstream(dir_ + "/model.safetensors.index.json") << "{not json";
  EXPECT_THAT(ErrorOpening(dir_), HasSubstr("model.safetensors.index.json: not a JSON object"));
}

TEST_F(SafetensorsTest, MissingPaths) {
  EXPECT_THAT(ErrorOpening(dir_ + "/nothing.safetensors", absl::StatusCode::kNotFound),
              HasSubstr("nothing.safetensors"));
  EXPECT_THAT(ErrorOpening(dir_, absl::StatusCode::kNotFound), HasSubstr("no model.safetensors"));
}

TEST_F(SafetensorsTest, F64AndMetadataRoundTrip) {
  const std::string path = dir_ + "/f64.safetensors";
  const std::vector<double> v = {1.0 / 3.0, -2.5e-300, 7.0, std::nextafter(1.0, 2.0)};
  TensorToWrite t{.name = "m", .dtype = DType::kF64, .shape = {2, 2}};
  t.data_f64 = v;
  ASSERT_TRUE(WriteSafetensors(path, {t, {"w", DType::kF32, {1}, {0.5f}}}, {{"step", "12"}, {"plan", "FSF"}}).ok());
  auto store = TensorStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  auto back = (*store)->ReadF64(*(*store)->Find("m"));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, v);  // bit-exact
  auto widened = (*store)->ReadF64(*(*store)->Find("w"));
  EXPECT_EQ(*widened, std::vector<double>{0.5});
  EXPECT_EQ((*store)->metadata().at("step"), "12");
  EXPECT_EQ((*store)->metadata().at("plan"), "FSF");
  EXPECT_FALSE((*store)->ReadF32(*(*store)->Find("m")).ok());  // F64 is not silently narrowed
  TensorToWrite mixed{.name = "x", .dtype = DType::kF64, .shape = {1}, .data = {1.0f}};
  EXPECT_FALSE(WriteSafetensors(dir_ + "/bad.safetensors", {mixed}).ok());
  TensorToWrite wrong{.name = "x", .dtype = DType::kF32, .shape = {1}};
  wrong.data_f64 = {1.0};
  EXPECT_FALSE(WriteSafetensors(dir_ + "/bad.safetensors", {wrong}).ok());
}

TEST_F(SafetensorsTest, WriteRejectsBadInput) {
  EXPECT_FALSE(WriteSafetensors(dir_ + "/w.safetensors", {{"t", DType::kF32, {3}, {1, 2}}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir_ + "/w.safetensors", {{"t", DType::kI32, {1}, {1}}}).ok());
  EXPECT_FALSE(
      WriteSafetensors(dir_ + "/w.safetensors", {{"t", DType::kF32, {1}, {1}}, {"t", DType::kF32, {1}, {1}}}).ok());
  EXPECT_FALSE(WriteSafetensors(dir_ + "/no/such/dir/w.safetensors", {{"t", DType::kF32, {1}, {1}}}).ok());
}

TEST(GoldenSafetensorsTest, OpensGoldenCheckpoints) {
  {
    absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(SharedDir() + "/golden/dsv32-tiny");
    ASSERT_TRUE(store.ok()) << store.status();
    const TensorInfo* embed = (*store)->Find("model.embed_tokens.weight");
    ASSERT_NE(embed, nullptr);
    EXPECT_EQ(embed->dtype, DType::kF32);
    EXPECT_EQ(embed->shape, (std::vector<int64_t>{320, 128}));
    const TensorInfo* wq = (*store)->Find("model.layers.0.self_attn.indexer.wq_b.weight");
    ASSERT_NE(wq, nullptr);
    EXPECT_EQ(wq->shape, (std::vector<int64_t>{16 * 16, 48}));
    const TensorInfo* kv = (*store)->Find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
    ASSERT_NE(kv, nullptr);
    EXPECT_EQ(kv->shape, (std::vector<int64_t>{32 + 8, 128}));
    absl::StatusOr<std::vector<float>> values = (*store)->ReadF32(*embed);
    ASSERT_TRUE(values.ok());
    EXPECT_EQ(values->size(), 320u * 128u);
  }
  {
    absl::StatusOr<std::unique_ptr<TensorStore>> store =
        TensorStore::Open(SharedDir() + "/golden/glm5-tiny-indexcache/model.safetensors");
    ASSERT_TRUE(store.ok()) << store.status();
    // indexer_types = full, full, shared, shared, full, shared: Shared layers carry no indexer tensors.
    int indexer_layer2 = 0, indexer_layer1 = 0;
    for (const auto& [name, info] : (*store)->tensors()) {
      indexer_layer1 += name.rfind("model.layers.1.self_attn.indexer.", 0) == 0;
      indexer_layer2 += name.rfind("model.layers.2.self_attn.indexer.", 0) == 0;
    }
    EXPECT_GT(indexer_layer1, 0);
    EXPECT_EQ(indexer_layer2, 0);
  }
  {
    absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(SharedDir() + "/golden/llama-tiny-dense");
    ASSERT_TRUE(store.ok()) << store.status();
    const TensorInfo* k = (*store)->Find("model.layers.0.self_attn.k_proj.weight");
    ASSERT_NE(k, nullptr);
    EXPECT_EQ(k->shape, (std::vector<int64_t>{2 * 16, 96}));
    const TensorInfo* q = (*store)->Find("model.layers.2.self_attn.q_proj.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->shape, (std::vector<int64_t>{6 * 16, 96}));
  }
  {
    absl::StatusOr<std::unique_ptr<TensorStore>> golden =
        TensorStore::Open(SharedDir() + "/golden/dsv32-tiny/golden.safetensors");
    ASSERT_TRUE(golden.ok()) << golden.status();
    const TensorInfo* ids = (*golden)->Find("input_ids");
    ASSERT_NE(ids, nullptr);
    EXPECT_EQ(ids->dtype, DType::kI32);
    EXPECT_EQ(ids->shape, (std::vector<int64_t>{80}));
  }
}

}  // namespace
}  // namespace ic
