#pragma once
// One published value (the relay's configuration snapshot) read by N pinned workers without
// locks, replaced by one writer (the control thread) by pointer swap, reclaimed once every reader
// has moved past it (RCU with per-reader generations).
//
// Writer: publish(new) stores the pointer, then bumps the generation (release). The old value
// goes to a retired list tagged with the new generation g: a reader that has announced g (or
// later) loaded the pointer after the swap and can no longer hold the old one.
// Reader i: refresh() at the top of each loop iteration: one acquire load of the generation; only
// when it changed, it loads the pointer and then announces the generation it saw. Between two
// refresh() calls the reader may use the pointer freely.
// A reader that sleeps (io_uring wait) keeps old values alive: the writer wakes readers after
// publishing and reclaims on its own clock.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

namespace apprelay::core {

template <class T> class rcu_cell {
public:
    rcu_cell(std::size_t readers, std::unique_ptr<const T> initial)
        : _slots(std::make_unique<slot[]>(readers)), _readers(readers) {
        _cur.store(initial.release(), std::memory_order_release);
    }
    ~rcu_cell() {
        delete _cur.load(std::memory_order_acquire);
        for (auto& r : _retired) {
            delete r.value;
        }
    }
    rcu_cell(const rcu_cell&) = delete;
    rcu_cell& operator=(const rcu_cell&) = delete;

    // ---- writer (one thread) ----
    void publish(std::unique_ptr<const T> next) {
        const T* old = _cur.exchange(next.release(), std::memory_order_acq_rel);
        const uint64_t g = _gen.fetch_add(1, std::memory_order_acq_rel) + 1;
        _retired.push_back({g, old});
    }
    // Frees retired values no reader can still hold; returns how many are still pending.
    std::size_t reclaim() {
        uint64_t min_seen = UINT64_MAX;
        for (std::size_t i = 0; i < _readers; ++i) {
            min_seen = std::min(min_seen, _slots[i].seen.load(std::memory_order_acquire));
        }
        std::size_t kept = 0;
        for (auto& r : _retired) {
            if (r.gen <= min_seen) {
                delete r.value;
            } else {
                _retired[kept++] = r;
            }
        }
        _retired.resize(kept);
        return kept;
    }
    const T* writer_view() const noexcept { return _cur.load(std::memory_order_acquire); }
    uint64_t generation() const noexcept { return _gen.load(std::memory_order_acquire); }

    // ---- reader i (one thread each) ----
    class reader {
    public:
        reader(rcu_cell* cell, std::size_t index) : _cell(cell), _index(index) { refresh(); }
        // True when the value changed since the previous refresh.
        bool refresh() noexcept {
            const uint64_t g = _cell->_gen.load(std::memory_order_acquire);
            if (g == _gen && _value != nullptr) {
                return false;
            }
            _value = _cell->_cur.load(std::memory_order_acquire);
            _gen = g;
            _cell->_slots[_index].seen.store(g, std::memory_order_release);
            return true;
        }
        const T& operator*() const noexcept { return *_value; }
        const T* operator->() const noexcept { return _value; }
        const T* get() const noexcept { return _value; }

    private:
        rcu_cell* _cell;
        std::size_t _index;
        const T* _value = nullptr;
        uint64_t _gen = 0;
    };

private:
    struct alignas(64) slot { // one cache line per reader: no false sharing on announce
        std::atomic<uint64_t> seen{0};
    };
    struct retired {
        uint64_t gen;
        const T* value;
    };
    std::atomic<const T*> _cur{nullptr};
    std::atomic<uint64_t> _gen{0};
    std::unique_ptr<slot[]> _slots;
    std::size_t _readers;
    std::vector<retired> _retired;
};

} // namespace apprelay::core
