#include "dataplane/net/arp.hh"

#include "dataplane/net/detail/wire.hh"

#include <cstring>

namespace apprelay::net {

using detail::load16;
using detail::load32;
using detail::load8;
using detail::store16;
using detail::store32;

bool parse_arp(std::span<const std::byte> b, arp_packet& p) noexcept {
    if (b.size() < k_arp_packet) {
        return false;
    }
    const std::byte* d = b.data();
    if (load16(d) != 1 || load16(d + 2) != 0x0800 || load8(d + 4) != 6 || load8(d + 5) != 4) {
        return false;
    }
    p.op = load16(d + 6);
    if (p.op != k_arp_request && p.op != k_arp_reply) {
        return false;
    }
    std::memcpy(p.sha.data(), d + 8, 6);
    p.spa = load32(d + 14);
    std::memcpy(p.tha.data(), d + 18, 6);
    p.tpa = load32(d + 24);
    // A group or zero sender address would poison the cache: never a real interface.
    return !is_group_mac(p.sha) && !is_zero_mac(p.sha);
}

void write_arp(std::byte* d, const arp_packet& p) noexcept {
    store16(d, 1);
    store16(d + 2, 0x0800);
    d[4] = std::byte{6};
    d[5] = std::byte{4};
    store16(d + 6, p.op);
    std::memcpy(d + 8, p.sha.data(), 6);
    store32(d + 14, p.spa);
    std::memcpy(d + 18, p.tha.data(), 6);
    store32(d + 24, p.tpa);
}

arp_cache::arp_cache(uint32_t max_entries, uint64_t seed)
    : _table(max_entries == 0 ? 1 : max_entries), _seed(seed | 1) {}

uint64_t arp_cache::hash(uint32_t ip) const noexcept {
    // Keyed multiplicative mix: an on-link attacker cannot pick addresses that collide.
    uint64_t x = (uint64_t(ip) ^ _seed) * 0x9e3779b97f4a7c15ull;
    return x ^ (x >> 29);
}

arp_entry* arp_cache::find(uint32_t ip) noexcept {
    return _table.find(hash(ip), [ip](const arp_entry& e) { return e.ip == ip; });
}

arp_entry* arp_cache::insert(uint32_t ip, uint64_t now_ns, bool evict) noexcept {
    if (_table.size() >= _table.max_size()) {
        // Purge expired resolved entries; pending ones are bounded by their retry count.
        _table.erase_if(
            [now_ns](const arp_entry& e) {
                return e.state == arp_entry::kind::resolved && e.deadline_ns <= now_ns;
            },
            [this](const arp_entry& s) { return hash(s.ip); });
    }
    if (_table.size() >= _table.max_size() && evict) {
        arp_entry* oldest = nullptr;
        _table.for_each([&](arp_entry& e) {
            if (e.state == arp_entry::kind::resolved &&
                (oldest == nullptr || e.deadline_ns < oldest->deadline_ns)) {
                oldest = &e;
            }
        });
        if (oldest != nullptr) {
            erase(oldest);
        }
    }
    arp_entry* e = _table.insert(hash(ip));
    if (e != nullptr) {
        e->ip = ip;
    }
    return e;
}

void arp_cache::erase(arp_entry* e) noexcept {
    _table.erase(e, [this](const arp_entry& s) { return hash(s.ip); });
}

} // namespace apprelay::net
