#include "dataplane/core/timer_wheel.hh"

#include <bit>
#include <cassert>

namespace apprelay::core {

timer::~timer() {
    if (_wheel != nullptr) {
        _wheel->cancel(*this);
    }
}

timer_wheel::timer_wheel(uint64_t tick_ns, uint64_t now_ns, std::size_t slots)
    : _tick_ns(tick_ns == 0 ? 1 : tick_ns), _origin_ns(now_ns),
      _mask(std::bit_ceil(slots == 0 ? std::size_t(1) : slots) - 1), _slots(_mask + 1) {
    assert(tick_ns > 0);
    for (timer& head : _slots) {
        head._prev = head._next = &head;
    }
    _due._prev = _due._next = &_due;
    _firing._prev = _firing._next = &_firing;
}

timer_wheel::~timer_wheel() {
    for (timer& head : _slots) {
        release_all(head);
    }
    release_all(_due);
    release_all(_firing);
}

void timer_wheel::release_all(timer& list) {
    while (!empty(list)) {
        timer* t = list._next;
        unlink(*t);
        t->_wheel = nullptr;
    }
}

void timer_wheel::link_tail(timer& list, timer& t) {
    t._prev = list._prev;
    t._next = &list;
    list._prev->_next = &t;
    list._prev = &t;
}

void timer_wheel::unlink(timer& t) {
    t._prev->_next = t._next;
    t._next->_prev = t._prev;
    t._prev = t._next = nullptr;
}

uint64_t timer_wheel::tick_of_deadline(uint64_t deadline_ns) const {
    if (deadline_ns <= _origin_ns) {
        return 0;
    }
    const uint64_t d = deadline_ns - _origin_ns;
    return d / _tick_ns + (d % _tick_ns != 0 ? 1 : 0);
}

uint64_t timer_wheel::tick_of_now(uint64_t now_ns) const {
    return now_ns <= _origin_ns ? 0 : (now_ns - _origin_ns) / _tick_ns;
}

uint64_t timer_wheel::time_of_tick(uint64_t tick) const {
    const uint64_t max = std::numeric_limits<uint64_t>::max();
    if (tick > (max - _origin_ns) / _tick_ns) {
        return max;
    }
    return _origin_ns + tick * _tick_ns;
}

void timer_wheel::schedule(timer& t, uint64_t deadline_ns) {
    assert(t._wheel == nullptr || t._wheel == this);
    if (t._wheel != nullptr) {
        t._wheel->cancel(t);
    }
    const uint64_t tick = tick_of_deadline(deadline_ns);
    t._expiry_tick = tick;
    t._wheel = this;
    ++_count;
    if (tick <= _current_tick) {
        link_tail(_due, t);
    } else {
        link_tail(_slots[tick & _mask], t);
    }
}

void timer_wheel::cancel(timer& t) {
    if (t._wheel == nullptr) {
        return;
    }
    assert(t._wheel == this);
    unlink(t);
    t._wheel = nullptr;
    --_count;
}

std::size_t timer_wheel::fire_list(timer& list) {
    std::size_t fired = 0;
    while (!empty(list)) {
        timer* t = list._next;
        unlink(*t);
        t->_wheel = nullptr;
        --_count;
        ++fired;
        // The callback may free t: nothing below touches it.
        if (t->fn != nullptr) {
            t->fn(t, t->ctx);
        }
    }
    return fired;
}

uint64_t timer_wheel::min_slot_expiry() const {
    uint64_t min = std::numeric_limits<uint64_t>::max();
    for (const timer& head : _slots) {
        for (const timer* t = head._next; t != &head; t = t->_next) {
            if (t->_expiry_tick < min) {
                min = t->_expiry_tick;
            }
        }
    }
    return min;
}

std::size_t timer_wheel::advance(uint64_t now_ns) {
    assert(!_in_advance && "advance() called from a timer callback");
    _in_advance = true;
    const uint64_t now_tick = tick_of_now(now_ns);

    // Splice the due list first: anything added to it from now on waits for the next call.
    if (!empty(_due)) {
        _firing._next = _due._next;
        _firing._prev = _due._prev;
        _firing._next->_prev = &_firing;
        _firing._prev->_next = &_firing;
        _due._prev = _due._next = &_due;
    }
    std::size_t fired = fire_list(_firing);

    // Ticks walked since the last min_slot_expiry() scan; starts "a revolution ago" so a long
    // sleep can jump at once.
    uint64_t walked = _mask + 1;
    while (_current_tick < now_tick) {
        if (_count == 0) {
            _current_tick = now_tick;
            break;
        }
        // After a long sleep, jump to the earliest expiry instead of walking every empty tick. The
        // scan visits every timer, as walking one revolution does, so it runs at most once per
        // revolution walked: many far timers cost O(timers) per revolution, never O(timers^2).
        if (now_tick - _current_tick > _mask + 1 && walked > _mask) {
            walked = 0;
            const uint64_t next = min_slot_expiry();
            const uint64_t target = next < now_tick ? next : now_tick;
            if (target > _current_tick + 1) {
                _current_tick = target - 1;
            }
        }
        ++walked;
        ++_current_tick;
        timer& head = _slots[_current_tick & _mask];
        for (timer* t = head._next; t != &head;) {
            timer* next = t->_next;
            if (t->_expiry_tick <= _current_tick) {
                unlink(*t);
                link_tail(_firing, *t);
            }
            t = next;
        }
        fired += fire_list(_firing);
    }
    _in_advance = false;
    return fired;
}

uint64_t timer_wheel::next_deadline_hint(uint64_t now_ns) const {
    if (_count == 0) {
        return k_no_deadline;
    }
    if (!empty(_due) || !empty(_firing)) {
        return now_ns;
    }
    for (uint64_t tick = _current_tick + 1; tick <= _current_tick + _mask + 1; ++tick) {
        const timer& head = _slots[tick & _mask];
        for (const timer* t = head._next; t != &head; t = t->_next) {
            if (t->_expiry_tick <= tick) {
                const uint64_t at = time_of_tick(tick);
                return at < now_ns ? now_ns : at;
            }
        }
    }
    const uint64_t at = time_of_tick(min_slot_expiry());
    return at < now_ns ? now_ns : at;
}

} // namespace apprelay::core
