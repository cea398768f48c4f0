#pragma once
// Per-source budgets at the relay's user edge (tunnel SPEC, "Error scopes"; issue 11).
//
// A tunnel carries many users, so what users do (open, abort) is charged here, to the source
// address it comes from, and never to the tunnel. Each source has two token buckets: opens
// (every user connection accepted) and aborts (a user that resets mid-exchange, or fails or
// abandons its TLS handshake). A source whose opens or aborts bucket is empty gets its new
// connections closed at accept, before any TLS work, until the bucket refills; connections it
// already has are untouched. IPv4 sources are keyed by /32, IPv6 by /64 (one subscriber).
//
// One table per worker, nothing shared: a source's connections are spread over the workers by
// the kernel's SO_REUSEPORT hash, so each worker enforces rate / workers. The table is bounded:
// a source whose buckets have refilled completely carries no state and is dropped by sweep();
// when the table is full of busy sources a new source is admitted untracked and counted
// (table_full), so the bound never refuses a user by itself. A source with connections open
// against the connection cap keeps its entry until they close.
#include <sys/socket.h>

#include "dataplane/base/token_bucket.hh"

#include <cstdint>
#include <string>
#include <unordered_map>

namespace apprelay::relay {

struct source_key {
    uint64_t hi = 0; // IPv4: 0; IPv6: the /64 prefix
    uint64_t lo = 0; // IPv4: 0xffff'0000'0000 | address; IPv6: 0
    bool operator==(const source_key&) const = default;
};

// From a peer address (sockaddr_in or sockaddr_in6; v4-mapped IPv6 counts as IPv4).
source_key source_key_of(const sockaddr_storage& ss) noexcept;
// The key as an address for logs ("192.0.2.7", "2001:db8:1:2::/64").
std::string source_key_text(const source_key& k);

struct source_limits {
    // Per second and burst, for this worker (the configured value / workers). rate 0 = off.
    uint32_t open_rate = 0;
    uint32_t open_burst = 0;
    uint32_t abort_rate = 0;
    uint32_t abort_burst = 0;
    // Connections open at once from one source on this worker (the configured value / workers);
    // 0 = off.
    uint32_t max_conns = 0;
    uint32_t max_sources = 65'536;
};

class source_budget {
public:
    enum class verdict : uint8_t { admit, opens_exhausted, aborts_exhausted, conns_exhausted };

    explicit source_budget(source_limits l = {}) : _l(l) {}
    void set_limits(const source_limits& l) noexcept { _l = l; }
    const source_limits& limits() const noexcept { return _l; }

    // A new connection from k: admit (one open token taken) or refuse (nothing taken). With a
    // connection cap, an admitted connection counts against it (*counted = true) until
    // release(k).
    verdict admit(const source_key& k, uint64_t now_ns, bool* counted = nullptr);
    // A connection admit() counted has closed.
    void release(const source_key& k) noexcept;
    // k aborted a connection: one abort token (saturates at 0).
    void charge_abort(const source_key& k, uint64_t now_ns);
    // Drops sources whose buckets are full again (they carry no state).
    void sweep(uint64_t now_ns);

    std::size_t tracked() const noexcept { return _table.size(); }
    uint64_t table_full() const noexcept { return _table_full; }

private:
    // Tokens are kept in nanotokens (1 token = 1e9), so refill is exact in integer math.
    struct entry {
        int64_t opens;
        int64_t aborts; // may be in debt, down to -burst (charge_abort)
        uint64_t last_ns;
        uint32_t conns = 0; // open connections counted by admit (kept while > 0)
    };
    struct key_hash {
        std::size_t operator()(const source_key& k) const noexcept {
            uint64_t x = k.hi * 0x9e3779b97f4a7c15ull ^ k.lo;
            x ^= x >> 31;
            x *= 0xbf58476d1ce4e5b9ull;
            return std::size_t(x ^ (x >> 29));
        }
    };

    entry* find_or_add(const source_key& k, uint64_t now_ns);
    void refill(entry& e, uint64_t now_ns) const noexcept;
    bool full(const entry& e, uint64_t now_ns) const noexcept;

    source_limits _l;
    std::unordered_map<source_key, entry, key_hash> _table;
    uint64_t _table_full = 0;
};

} // namespace apprelay::relay
