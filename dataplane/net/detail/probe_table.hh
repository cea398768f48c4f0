#pragma once
// Open-addressing hash table with linear probing and backward-shift deletion (no tombstones, so
// lookups stay short however many inserts and erases happen). Sized once for max_entries at a
// load factor <= 1/2 and never resized: inserts beyond max_entries fail, so memory is bounded and
// the hot path never allocates. T is a plain slot with used()/clear(); callers pass the hash so
// the table needs no knowledge of the key.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace apprelay::net::detail {

template <class T> class probe_table {
public:
    explicit probe_table(std::size_t max_entries)
        : _max(max_entries == 0 ? 1 : max_entries), _slots(std::bit_ceil(_max * 2)),
          _mask(_slots.size() - 1) {}

    template <class Eq> T* find(uint64_t h, Eq eq) noexcept {
        for (std::size_t i = h & _mask;; i = (i + 1) & _mask) {
            T& s = _slots[i];
            if (!s.used()) {
                return nullptr;
            }
            if (eq(s)) {
                return &s;
            }
        }
    }

    // A free slot on h's probe path for the caller to fill (it must become used()), or nullptr
    // when max_entries are in use. The caller has checked that the key is not present.
    T* insert(uint64_t h) noexcept {
        if (_count >= _max) {
            return nullptr;
        }
        for (std::size_t i = h & _mask;; i = (i + 1) & _mask) {
            if (!_slots[i].used()) {
                ++_count;
                return &_slots[i];
            }
        }
    }

    // Removes *e (a pointer this table returned); hash_of(slot) recomputes a slot's hash.
    // Pointers to other slots may move: callers hold none across an erase.
    template <class Hash> void erase(T* e, Hash hash_of) noexcept {
        std::size_t i = static_cast<std::size_t>(e - _slots.data());
        for (std::size_t j = (i + 1) & _mask; _slots[j].used(); j = (j + 1) & _mask) {
            const std::size_t home = hash_of(_slots[j]) & _mask;
            // Move j back into the hole at i unless its home lies cyclically in (i, j].
            const bool stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
            if (!stays) {
                _slots[i] = _slots[j];
                i = j;
            }
        }
        _slots[i].clear();
        --_count;
    }

    // Erases every slot matching pred in one pass: an erase may shift a later slot into the
    // hole, so the same index is looked at again (a slot shifted across the wrap may be missed;
    // callers use this to reclaim space, not for exactness).
    template <class Pred, class Hash> void erase_if(Pred pred, Hash hash_of) noexcept {
        for (std::size_t i = 0; i < _slots.size();) {
            if (_slots[i].used() && pred(_slots[i])) {
                erase(&_slots[i], hash_of);
            } else {
                ++i;
            }
        }
    }

    template <class F> void for_each(F f) {
        for (T& s : _slots) {
            if (s.used()) {
                f(s);
            }
        }
    }

    std::size_t size() const noexcept { return _count; }
    std::size_t max_size() const noexcept { return _max; }
    std::size_t memory_bytes() const noexcept { return _slots.size() * sizeof(T); }

private:
    std::size_t _max; // declared before _slots: the constructor sizes _slots from it
    std::size_t _count = 0;
    std::vector<T> _slots;
    std::size_t _mask;
};

} // namespace apprelay::net::detail
