#pragma once
// ARP for IPv4 over Ethernet (RFC 826): packet parsing/building and the neighbour cache.
//
// Cache policy: entries expire after arp_timeout (checked when read, so no sweep timer is
// needed); the table holds at most arp_max_entries and purges expired entries when full. An
// address being resolved is a `pending` entry with a retry deadline and at most one waiting
// connection, which is the one segment we queue per unresolved address: other connections to it
// retry by their own retransmission timer.
#include "dataplane/net/addr.hh"
#include "dataplane/net/detail/probe_table.hh"

#include <cstddef>
#include <cstdint>
#include <span>

namespace apprelay::net {

inline constexpr std::size_t k_arp_packet = 28;
inline constexpr uint16_t k_arp_request = 1;
inline constexpr uint16_t k_arp_reply = 2;

struct arp_packet {
    uint16_t op = 0;
    mac_addr sha{};
    uint32_t spa = 0;
    mac_addr tha{};
    uint32_t tpa = 0;
};

// False unless this is an Ethernet/IPv4 request or reply with a unicast sender (RFC 826
// "Packet Reception": hardware type 1, protocol 0x0800, lengths 6 and 4).
bool parse_arp(std::span<const std::byte> payload, arp_packet& p) noexcept;
// Writes the 28-byte ARP packet (after the Ethernet header).
void write_arp(std::byte* out, const arp_packet& p) noexcept;

struct arp_entry {
    enum class kind : uint8_t { empty, pending, resolved };
    uint32_t ip = 0;
    kind state = kind::empty;
    uint8_t tries = 0; // requests sent while pending
    mac_addr mac{};
    uint64_t deadline_ns = 0;     // resolved: expiry; pending: next request
    uint32_t waiter = UINT32_MAX; // connection slot waiting for this address
    uint32_t waiter_gen = 0;

    bool used() const noexcept { return state != kind::empty; }
    void clear() noexcept { *this = arp_entry{}; }
};

class arp_cache {
public:
    arp_cache(uint32_t max_entries, uint64_t seed);

    arp_entry* find(uint32_t ip) noexcept;
    // A fresh empty-state entry for ip (the caller sets state), or nullptr when the cache is
    // full even after dropping expired entries. With evict, a full cache gives up its resolved
    // entry closest to expiry instead (for our own lookups; never for what peers announce, or
    // a flood of ARP would push out the neighbours we talk to).
    arp_entry* insert(uint32_t ip, uint64_t now_ns, bool evict = false) noexcept;
    void erase(arp_entry* e) noexcept;
    template <class F> void for_each(F f) { _table.for_each(f); }
    std::size_t size() const noexcept { return _table.size(); }

private:
    uint64_t hash(uint32_t ip) const noexcept;
    detail::probe_table<arp_entry> _table;
    uint64_t _seed;
};

} // namespace apprelay::net
