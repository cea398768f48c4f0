#pragma once
// One SPSC ring per ordered pair of participants (control thread and workers): the only way work
// crosses cores. ring(from, to) has exactly one producer (the thread of `from`) and one consumer
// (the thread of `to`), so no ring is ever shared by two writers and nothing needs a lock.
//
// Built once at start-up, before the threads start (it allocates); never resized. A participant
// does not send to itself, so there is no ring for from == to: N participants own N*(N-1) rings.
#include "dataplane/core/spsc_ring.hh"

#include <cassert>
#include <cstddef>
#include <memory>
#include <vector>

namespace apprelay::core {

template <class T> class ring_mesh {
public:
    // Every ring gets `capacity` slots, rounded up to a power of two.
    ring_mesh(std::size_t participants, std::size_t capacity) : _n(participants) {
        const std::size_t rings = _n < 2 ? 0 : _n * (_n - 1);
        _rings.reserve(rings);
        for (std::size_t i = 0; i < rings; ++i) {
            // Each ring is its own allocation, cache-line aligned by spsc_ring itself.
            _rings.push_back(std::make_unique<spsc_ring<T>>(capacity));
        }
    }
    ring_mesh(const ring_mesh&) = delete;
    ring_mesh& operator=(const ring_mesh&) = delete;

    std::size_t participants() const noexcept { return _n; }

    // The ring `from` pushes into and `to` pops from; from != to, both < participants().
    spsc_ring<T>& ring(std::size_t from, std::size_t to) noexcept {
        return *_rings[index(from, to)];
    }
    const spsc_ring<T>& ring(std::size_t from, std::size_t to) const noexcept {
        return *_rings[index(from, to)];
    }

private:
    // Row `from` holds its N-1 peers in order, the diagonal squeezed out.
    std::size_t index(std::size_t from, std::size_t to) const noexcept {
        assert(from < _n && to < _n && from != to);
        return from * (_n - 1) + (to < from ? to : to - 1);
    }

    std::size_t _n;
    std::vector<std::unique_ptr<spsc_ring<T>>> _rings;
};

} // namespace apprelay::core
