#pragma once
// Token-bucket arithmetic in nanotokens (1 token = 1e9, so refill is exact in integers), shared
// by the tunnel's reset budget (dataplane/tunnel/mux.cc) and the relay's per-source budgets
// (dataplane/relay/source_budget.cc).
#include <algorithm>
#include <cstdint>

namespace apprelay {

constexpr uint64_t k_nanos_per_token = 1'000'000'000ull;

// tokens (may be negative: a debt) refilled for elapsed_ns at rate tokens/s (> 0), at most cap.
// Elapsed time beyond what fills the bucket is clamped first, so the product cannot wrap.
constexpr int64_t refill_tokens(int64_t tokens, uint64_t elapsed_ns, uint32_t rate,
                                int64_t cap) noexcept {
    if (tokens >= cap) {
        return cap;
    }
    uint64_t room = uint64_t(cap - tokens);
    if (elapsed_ns >= room / rate + 1) {
        return cap;
    }
    return std::min(cap, tokens + int64_t(elapsed_ns * rate));
}

} // namespace apprelay
