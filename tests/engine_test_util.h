// Shared by the engine tests: small synthetic models, seeded token streams, and the relative error used
// for logits (‖a − b‖ / ‖b‖, Frobenius).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "sdk/synthetic_model.h"

namespace ic::test {

// hidden 128, vocab 256, indexer 4 heads × 32.
inline std::shared_ptr<const Model> SmallSynthetic(Architecture arch, int layers, int topk,
                                                   const std::string& plan = "") {
  SyntheticModelOptions o;
  o.arch = arch;
  o.num_layers = layers;
  o.hidden_size = 128;
  o.vocab_size = 256;
  o.index_topk = topk;
  o.index_n_heads = 4;
  o.index_head_dim = 32;
  o.plan = plan;
  auto m = BuildSyntheticModel(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

inline std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

inline double RelError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += std::pow(double(a[i]) - b[i], 2);
    den += std::pow(double(b[i]), 2);
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace ic::test
