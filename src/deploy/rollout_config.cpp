// RolloutConfig's defaults, apart from rollout.cpp (the engine and its coroutines) so that the
// configuration reader links without them (test/fuzz/fuzz_config.cpp).
#include "guardia/deploy/rollout.hpp"

namespace guardia::deploy {

RolloutConfig::RolloutConfig() {
    tiers.emplace_back(1, 1, WindowMode::lockstep, true);
    tiers.emplace_back(2, 50, WindowMode::sliding, false);
    tiers.emplace_back(3, 0, WindowMode::sliding, false);
}

}  // namespace guardia::deploy
