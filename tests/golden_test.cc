// The checkpoints of tests/data/golden (written by HF transformers 5.17.0), loaded unchanged, reproduce
// HF's logits, top-k sets at every Full layer, and greedy tokens (prefill + decode with the KV cache).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "sdk/engine.h"
#include "sdk/safetensors.h"
#include "sdk/weights.h"

namespace ic {
namespace {

// IC_TEST_DATA overrides the data folder (for binaries run away from their source tree, e.g. on a GPU host).
std::string GoldenDir(const std::string& name) {
  const char* env = std::getenv("IC_TEST_DATA");
  return std::string(env != nullptr ? env : IC_SOURCE_DIR "/tests/data") + "/golden/" + name;
}

std::vector<int32_t> ReadI32(const TensorStore& store, const std::string& name) {
  const TensorInfo* t = store.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  EXPECT_EQ(t->dtype, DType::kI32) << name;
  std::vector<int32_t> v(t->numel());
  std::memcpy(v.data(), t->data, v.size() * sizeof(int32_t));
  return v;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, LogitsTopkAndGreedyTokensMatchTransformers) {
  const std::string dir = GoldenDir(GetParam());
  auto model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto golden = TensorStore::Open(dir + "/golden.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status();
  const ModelConfig& c = (*model)->config;
  const std::vector<int32_t> ids = ReadI32(**golden, "input_ids");
  const int S = static_cast<int>(ids.size());
  ASSERT_EQ(S, 80);
  auto want_logits = (*golden)->ReadF32(*(*golden)->Find("logits"));
  ASSERT_TRUE(want_logits.ok());

  auto ctx = Context::Create(*model, {.max_tokens = 256});
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  auto seq = (*ctx)->AddSequence();
  ASSERT_TRUE(seq.ok());
  std::vector<float> logits(static_cast<size_t>(S) * c.vocab_size);
  std::map<int, std::vector<int32_t>> topk;
  Segment seg{*seq, ids};
  ASSERT_TRUE((*ctx)->Forward({&seg, 1}, {.all_logits = logits.data(), .topk_by_layer = &topk}).ok());

  // Logits: relative Frobenius error.
  double num = 0, den = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    num += std::pow(double(logits[i]) - (*want_logits)[i], 2);
    den += std::pow(double((*want_logits)[i]), 2);
  }
  EXPECT_LT(std::sqrt(num / den), 1e-4) << "relative Frobenius error of the logits";

  // Top-k sets at every Full layer (HF rows hold masked positions > t for short rows: ignore them).
  int full_layers_checked = 0;
  for (int l = 0; l < c.num_hidden_layers && c.has_indexer; ++l) {
    if (!(*model)->plan.IsFull(l)) continue;
    const std::vector<int32_t> want = ReadI32(**golden, "topk.layer" + std::to_string(l));
    ASSERT_EQ(want.size(), static_cast<size_t>(S) * c.index_topk) << "layer " << l;
    const std::vector<int32_t>& got = topk[l];
    for (int t = 0; t < S; ++t) {
      std::vector<int32_t> a, b;
      for (int j = 0; j < c.index_topk; ++j) {
        const int32_t g = got[static_cast<size_t>(t) * c.index_topk + j];
        const int32_t w = want[static_cast<size_t>(t) * c.index_topk + j];
        if (g >= 0) a.push_back(g);
        if (w <= t) b.push_back(w);
      }
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      ASSERT_EQ(a, b) << "layer " << l << " row " << t;
    }
    ++full_layers_checked;
  }
  if (c.has_indexer) {
    EXPECT_EQ(full_layers_checked, (*model)->plan.NumFull());
  }
  // Shared layers attend over exactly their source Full layer's indices.
  for (int l = 0; l < c.num_hidden_layers && c.has_indexer; ++l) {
    EXPECT_EQ(topk[l], topk[(*model)->plan.SourceLayer(l)]) << "layer " << l;
  }

  // Greedy decoding: prefill the prompt, then decode with the KV cache.
  const int prompt_len = ReadI32(**golden, "greedy_prompt_len")[0];
  const std::vector<int32_t> want_tokens = ReadI32(**golden, "greedy_tokens");
  auto seq2 = (*ctx)->AddSequence();
  ASSERT_TRUE(seq2.ok());
  std::vector<float> last(c.vocab_size);
  ASSERT_TRUE((*ctx)->Prefill(*seq2, std::span(ids).first(prompt_len), last.data()).ok());
  std::vector<int32_t> got_tokens;
  for (size_t i = 0; i < want_tokens.size(); ++i) {
    const int32_t next = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    got_tokens.push_back(next);
    if (i + 1 < want_tokens.size()) {
      const int s = *seq2;
      ASSERT_TRUE((*ctx)->Decode({&s, 1}, {&next, 1}, last.data()).ok());
    }
  }
  EXPECT_EQ(got_tokens, want_tokens);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest,
                         ::testing::Values("dsv32-tiny", "glm5-tiny-indexcache", "llama-tiny-dense"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace ic
