// Stream multiplexer: see mux.hh for the contract and SPEC.md (M16-M26) for the rules enforced.
//
// Stream life (one `stream` record per id in `_streams`):
//   relay:     open() -> OPEN queued (acked=false, DATA allowed at once) -> OPEN_ACK (acked)
//   connector: OPEN received (acked=false, no DATA out) -> open_ack() (acked) | open_fail() (gone)
//   then FIN each way (fin_sent / fin_received); both -> on_stream_closed -> gone.
//   RST in or out, OPEN_FAIL, or a stream-level violation -> gone at any point.
//
// Re-entrancy: handler callbacks may call consumed/mark_readable/finish/reset/open_ack/open_fail
// while receive() or produce() is on the stack. Those calls only flip flags, queue control frames
// and link/unlink intrusive list nodes; a removed stream is only marked `dead` and moved to the
// dead list, and its record is erased by sweep() when no mux frame holds a pointer to it (the
// start and end of every receive()/produce()/open()). Records live in slabs that never move, so
// a stream* stays valid until sweep().
//
// Memory: stream records come from a per-tunnel pool of fixed slabs (freed records are reused;
// a slab is added only when the live count passes its high-water mark), indexed by an
// open-addressing table that likewise only grows with the high-water mark; control frames are
// encoded into one byte FIFO that grows to its high-water mark and is reused; the scheduler is an
// intrusive list. Nothing is allocated per frame once a tunnel has seen its peak stream count.
#include "dataplane/tunnel/mux.hh"

#include "dataplane/base/token_bucket.hh"

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>
#include <vector>

namespace apprelay::tunnel {

namespace {

// Worst-case encoded sizes for the control FIFO (str fields are u8 length + at most 255 bytes).
constexpr std::size_t k_str_max = 1 + 255;
constexpr std::size_t k_open_max = k_header_size + 2 * k_str_max;
constexpr std::size_t k_reason_max = k_header_size + 2 + k_str_max;
constexpr std::size_t k_goaway_max = k_header_size + 4 + 2 + k_str_max;
constexpr std::size_t k_hello_max = k_header_size + 12 + 2 * k_str_max;
constexpr std::size_t k_hello_ack_max = k_header_size + 24 + 2 * k_str_max;
constexpr std::size_t k_small_max = k_header_size + 8; // OPEN_ACK, WINDOW, PING, PONG

uint32_t load_be32(const std::byte* p) noexcept {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

} // namespace

struct stream {
    uint32_t sid = 0;
    bool acked = false;    // OPEN_ACK sent (connector) or received (relay)
    bool readable = false; // owner said pull() has bytes
    bool finish_pending = false;
    bool fin_sent = false;
    bool fin_received = false;
    bool dead = false;        // removed; erased by sweep()
    bool linked = false;      // in the ready list
    uint32_t send_credit = 0; // bytes we may still send
    uint32_t recv_credit = 0; // bytes the peer may still send (granted - received)
    uint32_t unreturned = 0;  // consumed by the owner, not yet returned in a WINDOW
    stream* prev = nullptr;   // ready list or dead list
    stream* next = nullptr;
};

// Stream records: a pool of fixed 64-record slabs (addresses never move; freed records are reused
// through a free list threaded on `next`) plus a linear-probing index sid -> record, power-of-two
// sized, at most half full, with backward-shift deletion (no tombstones, so lookups of the ids a
// flood probes stay short). Both only grow when the live count passes its previous peak.
class stream_table {
public:
    stream_table() { rehash(k_initial_slots); }

    stream* find(uint32_t sid) const noexcept {
        for (std::size_t i = home(sid);; i = (i + 1) & _mask) {
            stream* s = _slots[i];
            if (!s || s->sid == sid) {
                return s;
            }
        }
    }

    // sid must not be present.
    stream* insert(uint32_t sid) {
        if ((_size + 1) * 2 > _slots.size()) {
            rehash(_slots.size() * 2);
        }
        if (!_free) {
            add_slab();
        }
        stream* s = _free;
        _free = s->next;
        *s = stream{};
        s->sid = sid;
        place(s);
        ++_size;
        return s;
    }

    void erase(stream* s) noexcept {
        std::size_t i = home(s->sid);
        while (_slots[i] != s) {
            i = (i + 1) & _mask;
        }
        // Backward shift: pull later entries of the probe run into the hole unless their home
        // lies cyclically in (hole, j].
        for (std::size_t j = i;;) {
            j = (j + 1) & _mask;
            stream* t = _slots[j];
            if (!t) {
                break;
            }
            std::size_t k = home(t->sid);
            bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
            if (!stays) {
                _slots[i] = t;
                i = j;
            }
        }
        _slots[i] = nullptr;
        --_size;
        s->next = _free;
        _free = s;
    }

private:
    static constexpr std::size_t k_slab = 64;
    static constexpr std::size_t k_initial_slots = 128; // 64 streams before the first rehash

    std::size_t home(uint32_t sid) const noexcept {
        // Fibonacci hashing spreads the sequential odd ids over the whole table.
        return std::size_t((uint64_t(sid) * 0x9E3779B97F4A7C15ull) >> _shift);
    }

    void place(stream* s) noexcept {
        std::size_t i = home(s->sid);
        while (_slots[i]) {
            i = (i + 1) & _mask;
        }
        _slots[i] = s;
    }

    void rehash(std::size_t n) {
        std::vector<stream*> old = std::move(_slots);
        _slots.assign(n, nullptr);
        _mask = n - 1;
        _shift = 64 - unsigned(std::countr_zero(n));
        for (stream* s : old) {
            if (s) {
                place(s);
            }
        }
    }

    void add_slab() {
        _slabs.push_back(std::make_unique<stream[]>(k_slab));
        stream* slab = _slabs.back().get();
        for (std::size_t i = 0; i < k_slab; ++i) {
            slab[i].next = _free;
            _free = &slab[i];
        }
    }

    std::vector<std::unique_ptr<stream[]>> _slabs;
    stream* _free = nullptr;
    std::vector<stream*> _slots;
    std::size_t _mask = 0;
    unsigned _shift = 64;
    std::size_t _size = 0;
};

struct mux::impl {
    impl(role r, const mux_limits& l, mux_handler& h)
        : _role(r), _limits(l), _h(h), _dec(l.max_frame),
          _tokens(uint64_t(l.open_reset_burst) * k_nanos_per_token) {
        _peer_window = l.initial_window;
        _ctl.reserve(4096);
    }

    role _role;
    mux_limits _limits;
    mux_handler& _h;
    frame_decoder _dec;
    mux_counter_block _counters;

    stream_table _streams;
    uint32_t _live = 0;        // streams not dead
    uint32_t _highest_sid = 0; // highest stream id ever opened (by either side's view)
    // The peer's initial_window (HELLO / HELLO_ACK): each stream's send credit starts there.
    // Until the peer said, ours (both sides used one value before windows were per direction).
    uint32_t _peer_window = 0;
    uint32_t _next_sid = 1;    // relay: next id to open

    // Scheduler: streams that may produce DATA or FIN now, served round-robin.
    stream* _ready_head = nullptr;
    stream* _ready_tail = nullptr;
    stream* _dead_head = nullptr; // singly used via next

    // Control FIFO: whole encoded frames in [_ctl_head, _ctl.size()).
    std::vector<std::byte> _ctl;
    std::size_t _ctl_head = 0;
    uint32_t _ctl_count = 0;

    // Token bucket (M20): opens, resets, closed-stream frames.
    uint64_t _tokens;
    uint64_t _last_ns = 0;
    bool _clock_set = false;

    uint32_t _consecutive_empty = 0; // M23
    uint64_t _windows_in = 0;        // M24
    uint64_t _data_frames_out = 0;

    bool _goaway_sent = false;
    bool _goaway_received = false;
    error _failed{}; // sticky tunnel error

    // ---- streams ----------------------------------------------------------------------------

    stream* find_live(uint32_t sid) noexcept {
        stream* s = _streams.find(sid);
        return s && !s->dead ? s : nullptr;
    }

    // An id that was opened once and is not live now: its frames are late, not forged (M20).
    bool was_used(uint32_t sid) const noexcept { return (sid & 1) != 0 && sid <= _highest_sid; }

    stream* create(uint32_t sid) {
        stream& s = *_streams.insert(sid);
        s.sid = sid;
        s.send_credit = _peer_window; // what the peer grants (its HELLO / HELLO_ACK)
        s.recv_credit = _limits.initial_window; // what we grant
        ++_live;
        _counters.add(mux_counter::streams_opened);
        return &s;
    }

    void unlink(stream* s) noexcept {
        if (!s->linked) {
            return;
        }
        (s->prev ? s->prev->next : _ready_head) = s->next;
        (s->next ? s->next->prev : _ready_tail) = s->prev;
        s->prev = s->next = nullptr;
        s->linked = false;
    }

    void link_tail(stream* s) noexcept {
        s->prev = _ready_tail;
        s->next = nullptr;
        (_ready_tail ? _ready_tail->next : _ready_head) = s;
        _ready_tail = s;
        s->linked = true;
    }

    bool may_send(const stream* s) const noexcept {
        return !s->dead && !s->fin_sent && (_role == role::relay || s->acked);
    }

    // Eligible for the write path: bytes with credit to send, or a FIN owed (source drained).
    bool eligible(const stream* s) const noexcept {
        if (!may_send(s)) {
            return false;
        }
        return s->readable ? s->send_credit > 0 : s->finish_pending;
    }

    void schedule(stream* s) noexcept {
        if (!s->linked && eligible(s)) {
            link_tail(s);
        }
    }

    void remove(stream* s) noexcept {
        if (s->dead) {
            return;
        }
        unlink(s);
        s->dead = true;
        --_live;
        s->next = _dead_head;
        _dead_head = s;
    }

    // Erase dead records; only called where no stream* is held.
    void sweep() noexcept {
        while (_dead_head) {
            stream* s = _dead_head;
            _dead_head = s->next;
            _streams.erase(s);
        }
    }

    // ---- token bucket -----------------------------------------------------------------------

    void refill(uint64_t now_ns) noexcept {
        const uint64_t cap = uint64_t(_limits.open_reset_burst) * k_nanos_per_token;
        if (!_clock_set) {
            _clock_set = true;
            _last_ns = now_ns;
            return;
        }
        if (now_ns <= _last_ns) {
            return; // clock did not advance (or went back): no refill
        }
        uint64_t elapsed = now_ns - _last_ns;
        _last_ns = now_ns;
        if (_limits.open_reset_rate == 0) {
            return;
        }
        _tokens = uint64_t(refill_tokens(int64_t(_tokens), elapsed, _limits.open_reset_rate,
                                         int64_t(cap)));
    }

    // Takes one token; false when the bucket is empty (nothing taken).
    bool charge() noexcept {
        if (_tokens < k_nanos_per_token) {
            return false;
        }
        _tokens -= k_nanos_per_token;
        return true;
    }

    // Resets from the peer: a tunnel carries many users, and what they do (close, abort)
    // reaches the peer as RSTs, so these never fail the tunnel. They saturate at 0; an empty bucket refuses new streams (M20) until it refills.
    void charge_saturating() noexcept {
        _tokens = _tokens >= k_nanos_per_token ? _tokens - k_nanos_per_token : 0;
    }
    bool budget_left() const noexcept { return _tokens >= k_nanos_per_token; }

    // ---- control FIFO -----------------------------------------------------------------------

    template <class Encode> void queue(std::size_t max_size, Encode&& enc) {
        if (_ctl_head > 0 && _ctl_head == _ctl.size()) {
            _ctl.clear();
            _ctl_head = 0;
        }
        std::size_t at = _ctl.size();
        _ctl.resize(at + max_size);
        std::size_t n = enc(std::span<std::byte>(_ctl.data() + at, max_size));
        _ctl.resize(at + n);
        if (n > 0) {
            ++_ctl_count;
        }
    }

    void queue_rst(uint32_t sid, reason r, std::string_view msg) {
        queue(k_reason_max, [&](std::span<std::byte> o) {
            return encode_rst(o, sid, reason_frame{r, msg});
        });
        _counters.add(mux_counter::streams_reset_out);
    }

    void queue_window(stream* s) {
        uint32_t inc = s->unreturned;
        s->unreturned = 0;
        s->recv_credit += inc;
        queue(k_small_max, [&](std::span<std::byte> o) { return encode_window(o, s->sid, inc); });
        _counters.add(mux_counter::window_updates_out);
    }

    // ---- receive ----------------------------------------------------------------------------

    error fail(errc c, std::string_view detail) noexcept {
        if (c == errc::protocol_error) {
            _counters.add(mux_counter::protocol_errors);
        }
        _failed = error(c, detail);
        return _failed;
    }

    error rate_limited() noexcept {
        _counters.add(mux_counter::rate_limited);
        // errc has no rate_limited; overloaded is the closest code (GOAWAY reason rate_limited).
        return fail(errc::overloaded, "open/reset budget exhausted");
    }

    // M17: the window the peer grants per stream, from its HELLO (relay) / HELLO_ACK
    // (connector). It applies to streams created after it; a HELLO comes before any stream.
    result<void> take_peer_window(uint32_t w) {
        if (w < 1024 || w > k_max_window) {
            return fail(errc::protocol_error, "initial_window outside 1024..2^31-1");
        }
        _peer_window = w;
        return {};
    }

    // A stream-level violation (M17-M19): the owner hears on_reset, the peer an RST.
    result<void> stream_error(stream* s, reason r, std::string_view msg) {
        uint32_t sid = s->sid;
        remove(s);
        queue_rst(sid, r, msg);
        // A peer that provokes resets spends the reset budget (MadeYouReset, CVE-2025-8671).
        bool within_budget = charge();
        _h.on_reset(sid, r, msg);
        if (!within_budget) {
            return rate_limited();
        }
        return {};
    }

    // A frame for a stream that is gone: ignored (M20); never-used ids are forged.
    result<void> late_frame(uint32_t sid) {
        if (!was_used(sid)) {
            return fail(errc::protocol_error, "frame for a stream that was never opened");
        }
        // Not charged: after an RST of ours the peer may still have a window of DATA, a FIN or
        // its own RST in flight, and user aborts make that common (measured: 16 KiB frames
        // racing 1,000 aborts/s spent a 400 budget in half a second). Ignoring one costs what
        // any frame costs; never-used ids are refused above.
        _counters.add(mux_counter::closed_stream_frames);
        return {};
    }

    result<void> on_frame(const frame_decoder::frame& f);
    result<void> on_open(const frame_decoder::frame& f);
    result<void> on_data(const frame_decoder::frame& f);
    result<void> on_window(const frame_decoder::frame& f);
};

result<void> mux::impl::on_open(const frame_decoder::frame& f) {
    uint32_t sid = f.header.stream_id;
    if (_role == role::relay) {
        return fail(errc::protocol_error, "OPEN from the connector"); // M16
    }
    if ((sid & 1) == 0) {
        return fail(errc::protocol_error, "stream id not odd"); // M16
    }
    if (sid <= _highest_sid) {
        return fail(errc::protocol_error, "stream id not increasing"); // M16
    }
    auto o = decode_open(f.payload);
    if (!o) {
        return fail(o.err().code, o.err().detail);
    }
    _highest_sid = sid;
    // Opens themselves are not charged: concurrency is bounded by max_streams, and an open that
    // is then reset (Rapid Reset) pays through its RST. Charging opens capped new sessions at
    // the bucket rate per tunnel (measured: 324 of 3,000 refused at 650/s over 2 tunnels).
    // Refusals go out as RST (the id is used now); they are ours, so they are not charged.
    if (_goaway_sent || _goaway_received) {
        queue_rst(sid, reason::shutting_down, "OPEN after GOAWAY"); // M25
        return {};
    }
    if (_live >= _limits.max_streams) {
        queue_rst(sid, reason::stream_limit, "too many streams on this tunnel"); // M21
        return {};
    }
    if (!budget_left()) {
        // M20: the peer's resets spent the budget. New streams wait for it to refill; the
        // tunnel and its streams stay. rate_limited is retryable (another tunnel, or later).
        _counters.add(mux_counter::rate_limited);
        queue_rst(sid, reason::rate_limited, "open/reset budget exhausted, retry");
        return {};
    }
    create(sid);
    _h.on_open(sid, o->app, o->target);
    return {};
}

result<void> mux::impl::on_data(const frame_decoder::frame& f) {
    uint32_t sid = f.header.stream_id;
    uint32_t len = f.header.length;
    // M23 counts across the tunnel and before the stream lookup: empty frames on dead ids count.
    if (len == 0) {
        if (++_consecutive_empty > _limits.max_consecutive_empty) {
            return fail(errc::protocol_error, "too many consecutive empty DATA frames");
        }
    } else {
        _consecutive_empty = 0;
    }
    _counters.add(mux_counter::data_bytes_in, len);
    stream* s = find_live(sid);
    if (!s) {
        return late_frame(sid);
    }
    if (_role == role::relay && !s->acked) {
        return fail(errc::protocol_error, "DATA before OPEN_ACK"); // M26
    }
    if (s->fin_received) {
        return stream_error(s, reason::protocol_error, "DATA after FIN");
    }
    if (len > s->recv_credit) {
        _counters.add(mux_counter::flow_control_errors);
        return stream_error(s, reason::flow_control, "DATA beyond granted credit"); // M17
    }
    s->recv_credit -= len;
    if (len > 0) {
        _h.on_data(sid, f.payload);
    }
    return {};
}

result<void> mux::impl::on_window(const frame_decoder::frame& f) {
    uint32_t sid = f.header.stream_id;
    _counters.add(mux_counter::window_updates_in);
    // M24: a peer that sends WINDOW frames without us sending DATA is flooding; 10 frames of slack
    // cover the WINDOWs in flight when a stream starts.
    ++_windows_in;
    if (_windows_in > uint64_t(_limits.max_window_per_data) * (_data_frames_out + 10)) {
        return fail(errc::protocol_error, "too many WINDOW frames per DATA frame");
    }
    stream* s = find_live(sid);
    if (!s) {
        return late_frame(sid);
    }
    auto inc = decode_window(f.payload);
    if (!inc) {
        if (inc.code() == errc::flow_control) {
            _counters.add(mux_counter::flow_control_errors);
            return stream_error(s, reason::flow_control, inc.err().detail); // M13
        }
        return stream_error(s, reason::protocol_error, inc.err().detail); // M12, M19
    }
    // M18: checked add, the credit never exceeds 2^31-1.
    if (uint64_t(s->send_credit) + *inc > k_max_window) {
        _counters.add(mux_counter::flow_control_errors);
        return stream_error(s, reason::flow_control, "WINDOW raises credit above 2^31-1");
    }
    s->send_credit += *inc;
    schedule(s);
    return {};
}

result<void> mux::impl::on_frame(const frame_decoder::frame& f) {
    _counters.add(mux_counter::frames_in);
    _counters.add(in_counter(f.header.type));
    const uint32_t sid = f.header.stream_id;
    switch (f.header.type) {
    case frame_type::data:
        return on_data(f);
    case frame_type::window:
        return on_window(f);
    case frame_type::open:
        return on_open(f);
    case frame_type::open_ack: {
        if (_role == role::connector) {
            return fail(errc::protocol_error, "OPEN_ACK from the relay");
        }
        stream* s = find_live(sid);
        if (!s) {
            return late_frame(sid);
        }
        if (s->acked) {
            return fail(errc::protocol_error, "duplicate OPEN_ACK");
        }
        s->acked = true;
        _h.on_open_ack(sid);
        return {};
    }
    case frame_type::open_fail: {
        if (_role == role::connector) {
            return fail(errc::protocol_error, "OPEN_FAIL from the relay");
        }
        auto r = decode_reason(f.payload);
        if (!r) {
            return fail(r.err().code, r.err().detail);
        }
        stream* s = find_live(sid);
        if (!s) {
            return late_frame(sid);
        }
        if (s->acked) {
            return fail(errc::protocol_error, "OPEN_FAIL after OPEN_ACK");
        }
        remove(s);
        _h.on_open_fail(sid, r->code, r->message);
        return {};
    }
    case frame_type::fin: {
        _consecutive_empty = 0;
        stream* s = find_live(sid);
        if (!s) {
            return late_frame(sid);
        }
        if (_role == role::relay && !s->acked) {
            return fail(errc::protocol_error, "FIN before OPEN_ACK"); // M26 (as for DATA)
        }
        if (s->fin_received) {
            return stream_error(s, reason::protocol_error, "duplicate FIN");
        }
        s->fin_received = true;
        bool closed = s->fin_sent;
        if (closed) {
            remove(s);
        }
        _h.on_fin(sid);
        if (closed) {
            _h.on_stream_closed(sid);
        }
        return {};
    }
    case frame_type::rst: {
        auto r = decode_reason(f.payload);
        if (!r) {
            return fail(r.err().code, r.err().detail);
        }
        _counters.add(mux_counter::streams_reset_in);
        stream* s = find_live(sid);
        if (!s) {
            return late_frame(sid); // charged once, as a late frame
        }
        charge_saturating();
        remove(s);
        _h.on_reset(sid, r->code, r->message);
        return {};
    }
    case frame_type::ping: {
        auto v = decode_ping(f.payload);
        if (!v) {
            return fail(v.err().code, v.err().detail);
        }
        uint64_t opaque = *v;
        queue(k_small_max, [&](std::span<std::byte> o) { return encode_pong(o, opaque); });
        return {};
    }
    case frame_type::pong: {
        auto v = decode_ping(f.payload);
        if (!v) {
            return fail(v.err().code, v.err().detail);
        }
        _h.on_pong(*v);
        return {};
    }
    case frame_type::goaway: {
        auto g = decode_goaway(f.payload);
        if (!g) {
            return fail(g.err().code, g.err().detail);
        }
        _goaway_received = true;
        _h.on_goaway(g->last_stream_id, g->code, g->message);
        return {};
    }
    case frame_type::hello: {
        if (_role == role::connector) {
            return fail(errc::protocol_error, "HELLO from the relay");
        }
        auto h = decode_hello(f.payload);
        if (!h) {
            return fail(h.err().code, h.err().detail);
        }
        if (auto w = take_peer_window(h->initial_window); !w) {
            return w;
        }
        _h.on_hello(*h);
        return {};
    }
    case frame_type::hello_ack: {
        if (_role == role::relay) {
            return fail(errc::protocol_error, "HELLO_ACK from the connector");
        }
        auto h = decode_hello_ack(f.payload);
        if (!h) {
            return fail(h.err().code, h.err().detail);
        }
        if (auto w = take_peer_window(h->initial_window); !w) {
            return w;
        }
        _h.on_hello_ack(*h);
        return {};
    }
    case frame_type::config: {
        auto c = decode_config(f.payload);
        if (!c) {
            return fail(c.err().code, c.err().detail);
        }
        _h.on_config(c->version, c->body);
        return {};
    }
    }
    return fail(errc::protocol_error, "unknown frame type");
}

// ---- mux --------------------------------------------------------------------------------------

mux::mux(role r, const mux_limits& l, mux_handler& h) : _impl(std::make_unique<impl>(r, l, h)) {}

mux::~mux() = default;

result<void> mux::receive(std::span<const std::byte> bytes, uint64_t now_ns) {
    impl& m = *_impl;
    if (m._failed.code != errc::ok) {
        return m._failed;
    }
    m.sweep();
    m.refill(now_ns);
    m._dec.feed(bytes);
    result<void> out;
    for (;;) {
        auto f = m._dec.next();
        if (!f) {
            if (f.code() != errc::again) {
                out = m.fail(f.code(), f.err().detail);
            }
            break;
        }
        out = m.on_frame(*f);
        if (!out) {
            break;
        }
        // M22: checked per frame so a flood in one chunk cannot grow the queue unboundedly.
        if (m._ctl_count > m._limits.max_control_queue) {
            m._counters.add(mux_counter::rate_limited);
            out = m.fail(errc::overloaded, "control queue overflow: peer floods while not reading");
            break;
        }
    }
    m.sweep();
    return out;
}

result<uint32_t> mux::open(std::string_view app, std::string_view target, uint64_t now_ns) {
    impl& m = *_impl;
    if (m._role != role::relay) {
        return error(errc::invalid_argument, "only the relay opens streams");
    }
    if (m._goaway_sent || m._goaway_received) {
        return error(errc::shutting_down, "tunnel is going away");
    }
    m.sweep();
    if (m._live >= m._limits.max_streams) {
        return error(errc::stream_limit, "too many streams on this tunnel");
    }
    if (m._next_sid > k_max_window) {
        return error(errc::stream_limit, "stream ids exhausted on this tunnel");
    }
    m.refill(now_ns);
    if (!m.budget_left()) {
        // M20 from the relay's side: the connector's resets spent this tunnel's budget.
        m._counters.add(mux_counter::rate_limited);
        return error(errc::overloaded, "open/reset budget exhausted on this tunnel, retry");
    }
    uint32_t sid = m._next_sid;
    m._next_sid += 2;
    m._highest_sid = sid;
    m.create(sid);
    m.queue(k_open_max, [&](std::span<std::byte> o) {
        return encode_open(o, sid, open_frame{app, target});
    });
    return sid;
}

void mux::open_ack(uint32_t sid) {
    impl& m = *_impl;
    stream* s = m.find_live(sid);
    if (!s || m._role != role::connector || s->acked) {
        return;
    }
    s->acked = true;
    m.queue(k_small_max, [&](std::span<std::byte> o) { return encode_open_ack(o, sid); });
    m.schedule(s); // bytes the backend produced before the ACK may go now
}

void mux::open_fail(uint32_t sid, reason r, std::string_view msg) {
    impl& m = *_impl;
    stream* s = m.find_live(sid);
    if (!s || m._role != role::connector || s->acked) {
        return;
    }
    m.remove(s);
    m.queue(k_reason_max, [&](std::span<std::byte> o) {
        return encode_open_fail(o, sid, reason_frame{r, msg});
    });
}

void mux::mark_readable(uint32_t sid) {
    impl& m = *_impl;
    stream* s = m.find_live(sid);
    if (!s) {
        return;
    }
    s->readable = true;
    m.schedule(s);
}

void mux::finish(uint32_t sid) {
    impl& m = *_impl;
    stream* s = m.find_live(sid);
    if (!s || s->fin_sent) {
        return;
    }
    s->finish_pending = true;
    m.schedule(s);
}

void mux::reset(uint32_t sid, reason r, std::string_view msg) {
    impl& m = *_impl;
    stream* s = m.find_live(sid);
    if (!s) {
        return;
    }
    m.remove(s);
    m.queue_rst(sid, r, msg); // ours: not charged (users are charged at the relay's edge)
}

void mux::consumed(uint32_t sid, std::size_t n) {
    impl& m = *_impl;
    stream* s = m.find_live(sid);
    if (!s || n == 0) {
        return;
    }
    // Never return more than was granted: an owner miscount must not break 0 <= window <= 2^31-1.
    uint64_t granted_back = uint64_t(s->recv_credit) + s->unreturned;
    const uint64_t window = m._limits.initial_window;
    uint64_t room = granted_back < window ? window - granted_back : 0;
    s->unreturned += uint32_t(std::min<uint64_t>(n, room));
    // After the peer's FIN it sends no more DATA: credit would be wasted frames.
    if (!s->fin_received && s->unreturned > 0 &&
        s->unreturned >= std::max<uint32_t>(1, m._limits.initial_window / 4)) {
        m.queue_window(s);
    }
}

void mux::send_hello(const hello& h) {
    _impl->queue(k_hello_max, [&](std::span<std::byte> o) { return encode_hello(o, h); });
}

void mux::send_hello_ack(const hello_ack& h) {
    _impl->queue(k_hello_ack_max, [&](std::span<std::byte> o) { return encode_hello_ack(o, h); });
}

void mux::ping(uint64_t opaque) {
    _impl->queue(k_small_max, [&](std::span<std::byte> o) { return encode_ping(o, opaque); });
}

void mux::goaway(reason r, std::string_view msg) {
    impl& m = *_impl;
    if (m._goaway_sent) {
        return;
    }
    m._goaway_sent = true;
    goaway_frame g{m._highest_sid, r, msg};
    m.queue(k_goaway_max, [&](std::span<std::byte> o) { return encode_goaway(o, g); });
}

void mux::send_config(uint64_t version, std::span<const std::byte> body) {
    impl& m = *_impl;
    // A frame longer than the peer's max_frame would close the tunnel: oversized bodies are not
    // sent (the control plane keeps CONFIG bodies well below max_frame).
    if (body.size() + 8 > m._limits.max_frame) {
        m._counters.add(mux_counter::protocol_errors);
        return;
    }
    m.queue(k_header_size + 8 + body.size(),
            [&](std::span<std::byte> o) { return encode_config(o, version, body); });
}

std::size_t mux::produce(std::span<std::byte> out) {
    impl& m = *_impl;
    m.sweep();
    std::size_t pos = 0;
    // 1. Control frames, FIFO, whole frames only.
    while (m._ctl_head < m._ctl.size()) {
        const std::byte* f = m._ctl.data() + m._ctl_head;
        std::size_t n = k_header_size + load_be32(f + 8);
        if (n > out.size() - pos) {
            break;
        }
        std::memcpy(out.data() + pos, f, n);
        pos += n;
        m._ctl_head += n;
        --m._ctl_count;
        m._counters.add(mux_counter::frames_out);
        m._counters.add(out_counter(frame_type(uint8_t(f[0]))));
    }
    if (m._ctl_head == m._ctl.size()) {
        m._ctl.clear();
        m._ctl_head = 0;
    } else {
        // Frames queued before a stream's DATA (OPEN, OPEN_ACK) must precede it: no DATA until
        // the control queue is drained.
        if (m._ctl_head > m._ctl.size() / 2) {
            m._ctl.erase(m._ctl.begin(), m._ctl.begin() + std::ptrdiff_t(m._ctl_head));
            m._ctl_head = 0;
        }
        return pos;
    }
    // 2. DATA round-robin: pop the head, give it one quantum, re-queue it at the tail while it
    //    stays eligible. Every iteration writes a frame or drops a stream, so the loop ends.
    while (m._ready_head && out.size() - pos > k_header_size) {
        stream* s = m._ready_head;
        m.unlink(s);
        if (!m.eligible(s)) {
            continue;
        }
        std::byte* hdr = out.data() + pos;
        std::size_t room = out.size() - pos - k_header_size;
        std::size_t n = 0;
        if (s->readable) {
            std::size_t want = std::min<std::size_t>({room, s->send_credit, m._limits.max_frame});
            n = m._h.pull(s->sid, std::span<std::byte>(hdr + k_header_size, want));
            n = std::min(n, want);
            if (n == 0) {
                s->readable = false;
            }
        }
        if (s->dead) {
            continue; // the owner broke the pull() contract and reset the stream
        }
        if (n > 0) {
            encode_data_header(std::span<std::byte>(hdr, k_header_size), s->sid, uint32_t(n));
            pos += k_header_size + n;
            s->send_credit -= uint32_t(n);
            ++m._data_frames_out;
            m._counters.add(mux_counter::frames_out);
            m._counters.add(mux_counter::out_data);
            m._counters.add(mux_counter::data_bytes_out, n);
            m.schedule(s);
            continue;
        }
        if (!s->readable && s->finish_pending) {
            pos += encode_fin(std::span<std::byte>(hdr, k_header_size), s->sid);
            m._counters.add(mux_counter::frames_out);
            m._counters.add(mux_counter::out_fin);
            s->fin_sent = true;
            s->finish_pending = false;
            if (s->fin_received) {
                uint32_t sid = s->sid;
                m.remove(s);
                m._h.on_stream_closed(sid);
            }
        }
    }
    m.sweep();
    return pos;
}

bool mux::wants_produce() const noexcept {
    return _impl->_ctl_head < _impl->_ctl.size() || _impl->_ready_head != nullptr;
}

std::size_t mux::stream_count() const noexcept {
    return _impl->_live;
}

bool mux::going_away() const noexcept {
    return _impl->_goaway_sent || _impl->_goaway_received;
}

uint32_t mux::send_window(uint32_t sid) const noexcept {
    const stream* s = _impl->_streams.find(sid);
    return s && !s->dead ? s->send_credit : 0;
}

uint32_t mux::recv_window(uint32_t sid) const noexcept {
    const stream* s = _impl->_streams.find(sid);
    return s && !s->dead ? s->recv_credit : 0;
}

const mux_counter_block& mux::counters() const noexcept {
    return _impl->_counters;
}

} // namespace apprelay::tunnel
