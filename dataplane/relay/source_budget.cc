#include "dataplane/relay/source_budget.hh"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace apprelay::relay {

namespace {
int64_t cap_of(uint32_t burst) noexcept {
    return int64_t(std::max<uint32_t>(burst, 1)) * int64_t(k_nanos_per_token);
}

// A bucket whose rate is 0 is off: always full.
int64_t filled(int64_t tokens, uint64_t elapsed_ns, uint32_t rate, uint32_t burst) noexcept {
    return rate == 0 ? cap_of(burst) : refill_tokens(tokens, elapsed_ns, rate, cap_of(burst));
}
} // namespace

source_key source_key_of(const sockaddr_storage& ss) noexcept {
    source_key k;
    if (ss.ss_family == AF_INET) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
        k.lo = 0xffff'0000'0000ull | ntohl(a.sin_addr.s_addr);
        return k;
    }
    if (ss.ss_family == AF_INET6) {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
        const uint8_t* b = a.sin6_addr.s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) {
            uint32_t v4 = 0;
            std::memcpy(&v4, b + 12, 4);
            k.lo = 0xffff'0000'0000ull | ntohl(v4);
            return k;
        }
        uint64_t hi = 0;
        for (int i = 0; i < 8; ++i) {
            hi = (hi << 8) | b[i];
        }
        k.hi = hi;
        k.lo = 0;
        return k;
    }
    return k; // unix or unknown: one shared key
}

std::string source_key_text(const source_key& k) {
    char buf[INET6_ADDRSTRLEN + 8] = {};
    if (k.hi == 0 && (k.lo >> 32) == 0xffff) {
        in_addr a{};
        a.s_addr = htonl(uint32_t(k.lo));
        inet_ntop(AF_INET, &a, buf, sizeof buf);
        return buf;
    }
    in6_addr a{};
    for (int i = 0; i < 8; ++i) {
        a.s6_addr[i] = uint8_t(k.hi >> (56 - 8 * i));
    }
    inet_ntop(AF_INET6, &a, buf, sizeof buf);
    return std::string(buf) + "/64";
}

void source_budget::refill(entry& e, uint64_t now_ns) const noexcept {
    if (now_ns <= e.last_ns) {
        return; // clock did not advance (or went back): no refill
    }
    uint64_t elapsed = now_ns - e.last_ns;
    e.last_ns = now_ns;
    e.opens = filled(e.opens, elapsed, _l.open_rate, _l.open_burst);
    e.aborts = filled(e.aborts, elapsed, _l.abort_rate, _l.abort_burst); // debt repaid first
}

bool source_budget::full(const entry& e, uint64_t now_ns) const noexcept {
    entry copy = e;
    refill(copy, now_ns);
    return copy.conns == 0 && copy.opens >= cap_of(_l.open_burst) &&
           copy.aborts >= cap_of(_l.abort_burst);
}

source_budget::entry* source_budget::find_or_add(const source_key& k, uint64_t now_ns) {
    auto it = _table.find(k);
    if (it != _table.end()) {
        refill(it->second, now_ns);
        return &it->second;
    }
    if (_table.size() >= _l.max_sources) {
        sweep(now_ns);
        if (_table.size() >= _l.max_sources) {
            ++_table_full;
            return nullptr;
        }
    }
    auto [ins, _] = _table.emplace(k, entry{cap_of(_l.open_burst), cap_of(_l.abort_burst), now_ns});
    return &ins->second;
}

source_budget::verdict source_budget::admit(const source_key& k, uint64_t now_ns, bool* counted) {
    if (counted != nullptr) {
        *counted = false;
    }
    if (_l.open_rate == 0 && _l.abort_rate == 0 && _l.max_conns == 0) {
        return verdict::admit;
    }
    entry* e = find_or_add(k, now_ns);
    if (e == nullptr) {
        return verdict::admit; // table full of busy sources: untracked, never refused for it
    }
    if (_l.abort_rate != 0 && e->aborts < int64_t(k_nanos_per_token)) {
        return verdict::aborts_exhausted;
    }
    if (_l.max_conns != 0 && e->conns >= _l.max_conns) {
        return verdict::conns_exhausted;
    }
    if (_l.open_rate != 0) {
        if (e->opens < int64_t(k_nanos_per_token)) {
            return verdict::opens_exhausted;
        }
        e->opens -= int64_t(k_nanos_per_token);
    }
    if (_l.max_conns != 0 && counted != nullptr) {
        ++e->conns;
        *counted = true;
    }
    return verdict::admit;
}

void source_budget::release(const source_key& k) noexcept {
    auto it = _table.find(k);
    if (it != _table.end() && it->second.conns > 0) {
        --it->second.conns;
    }
}

void source_budget::charge_abort(const source_key& k, uint64_t now_ns) {
    if (_l.abort_rate == 0) {
        return;
    }
    entry* e = find_or_add(k, now_ns);
    if (e == nullptr) {
        return;
    }
    // Aborts are charged after the fact, when connections admitted on the last tokens end: the
    // bucket goes into debt (down to -burst) so that overshoot is repaid by later refusals and
    // the long-run rate stays the configured one.
    e->aborts -= int64_t(k_nanos_per_token);
    e->aborts = std::max(e->aborts, -cap_of(_l.abort_burst));
}

void source_budget::sweep(uint64_t now_ns) {
    std::erase_if(_table, [&](const auto& kv) { return full(kv.second, now_ns); });
}

} // namespace apprelay::relay
