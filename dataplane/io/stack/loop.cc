#include "dataplane/io/stack/loop.hh"

#include "dataplane/base/time.hh"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <time.h>
#include <x86intrin.h>

namespace apprelay::io {

namespace {
conn_id to_conn(net::sock_id s) {
    return conn_id{s.index, s.gen};
}
net::sock_id to_sock(conn_id c) {
    return net::sock_id{c.index, c.gen};
}
} // namespace

stack_loop::stack_loop(std::unique_ptr<frame_port> port, const net::stack_config& cfg)
    : _port(std::move(port)) {
    _stack = std::make_unique<net::stack>(cfg, &_port->tx(), static_cast<net::tcp_events*>(this));
    _now = mono_ns();
}

stack_loop::~stack_loop() = default;

// The stack numbers listeners apart from connections (the top bit of the index): two tables.
std::vector<stack_loop::slot>& stack_loop::table(uint32_t index) {
    return (index & k_listener_bit) != 0 ? _listener_slots : _slots;
}

stack_loop::slot* stack_loop::live(conn_id id) {
    auto& t = table(id.index);
    const uint32_t i = id.index & ~k_listener_bit;
    if (i >= t.size()) {
        return nullptr;
    }
    slot& s = t[i];
    return s.in_use && s.gen == id.gen ? &s : nullptr;
}

const stack_loop::slot* stack_loop::live(conn_id id) const {
    return const_cast<stack_loop*>(this)->live(id);
}

stack_loop::slot& stack_loop::take(net::sock_id id, sink* owner) {
    auto& t = table(id.index);
    const uint32_t i = id.index & ~k_listener_bit;
    if (i >= t.size()) {
        t.resize(std::size_t(i) + 1);
    }
    slot& s = t[i];
    s = slot{};
    s.gen = id.gen;
    s.owner = owner;
    s.in_use = true;
    ++_open;
    return s;
}

void stack_loop::release(conn_id id) {
    if (slot* s = live(id)) {
        s->in_use = false;
        s->owner = nullptr;
        --_open;
    }
}

sink* stack_loop::owner_of(net::sock_id id) {
    slot* s = live(to_conn(id));
    return s != nullptr ? s->owner : nullptr;
}

result<conn_id> stack_loop::listen(const listen_spec& spec, sink* owner) {
    if (spec.port == 0) {
        return error(errc::invalid_argument, "a user-space listener needs a port");
    }
    auto r = _stack->listen(spec.port);
    if (!r) {
        return r.err();
    }
    take(*r, owner);
    return to_conn(*r);
}

result<conn_id> stack_loop::connect(const sockaddr* addr, socklen_t len, sink* owner) {
    if (addr->sa_family != AF_INET || len < socklen_t(sizeof(sockaddr_in))) {
        return error(errc::not_supported, "the user-space stack connects to IPv4 only");
    }
    const auto* in = reinterpret_cast<const sockaddr_in*>(addr);
    auto r = _stack->connect(ntohl(in->sin_addr.s_addr), ntohs(in->sin_port), _now);
    if (!r) {
        return r.err();
    }
    take(*r, owner);
    return to_conn(*r);
}

void stack_loop::set_owner(conn_id id, sink* owner) {
    if (slot* s = live(id)) {
        s->owner = owner;
    }
}

void stack_loop::start_recv(conn_id id) {
    if (slot* s = live(id); s != nullptr && !s->recv_wanted) {
        s->recv_wanted = true;
        _stack->start_recv(to_sock(id));
    }
}

void stack_loop::pause_recv(conn_id id) {
    if (slot* s = live(id); s != nullptr && s->recv_wanted) {
        s->recv_wanted = false;
        _stack->pause_recv(to_sock(id));
    }
}

bool stack_loop::recv_wanted(conn_id id) const {
    const slot* s = live(id);
    return s != nullptr && s->recv_wanted;
}

bool stack_loop::send(conn_id id, std::span<const std::byte> data) {
    slot* s = live(id);
    if (s == nullptr || s->send_in_flight) {
        return false;
    }
    if (!_stack->send(to_sock(id), data)) {
        return false;
    }
    s->send_in_flight = true;
    return true;
}

bool stack_loop::send_in_flight(conn_id id) const {
    const slot* s = live(id);
    return s != nullptr && s->send_in_flight;
}

void stack_loop::close(conn_id id, bool abort) {
    if (live(id) == nullptr) {
        return;
    }
    release(id); // no callbacks from here on, whatever the stack reports
    _stack->close(to_sock(id), abort);
}

void stack_loop::shutdown_write(conn_id id) {
    if (live(id) != nullptr) {
        _stack->shutdown_write(to_sock(id));
    }
}

void stack_loop::detach(conn_id) {
    // can_hand_over() is false: callers never detach here.
}

result<conn_id> stack_loop::adopt(int, sink*) {
    return error(errc::not_supported, "user-space connections cannot be handed over");
}

void stack_loop::wake() noexcept {
    _wake_pending.store(true, std::memory_order_release);
}

// ------------------------------------------------------------------------------------- events

bool stack_loop::defer(ev_kind k, net::sock_id id, int res, std::span<const std::byte> data) {
    if (_from_loop) {
        return false;
    }
    _deferred.push_back(deferred{k, id, res, std::vector<std::byte>(data.begin(), data.end())});
    _counters.add(stack_loop_counter::deferred_events);
    return true;
}

void stack_loop::dispatch(ev_kind k, net::sock_id id, int res, std::span<const std::byte> data) {
    sink* o = owner_of(id);
    if (o == nullptr) {
        return;
    }
    const conn_id c = to_conn(id);
    if (k == ev_kind::sent) {
        live(c)->send_in_flight = false;
    }
    const bool was = _from_loop;
    _from_loop = false; // the owner's calls into the loop from here are API calls
    ++_events;
    switch (k) {
    case ev_kind::connect:
        o->on_connect(c, res);
        break;
    case ev_kind::recv:
        o->on_recv(c, data);
        break;
    case ev_kind::recv_end:
        o->on_recv_end(c, res);
        break;
    case ev_kind::sent:
        o->on_sent(c, res);
        break;
    }
    _from_loop = was;
}

unsigned stack_loop::dispatch_deferred() {
    if (_deferred.empty()) {
        return 0;
    }
    std::vector<deferred> now;
    now.swap(_deferred);
    _from_loop = true;
    for (auto& d : now) {
        dispatch(d.kind, d.id, d.res, d.data);
    }
    _from_loop = false;
    return unsigned(now.size());
}

void stack_loop::on_accept(net::sock_id listener, net::sock_id conn, uint32_t ip, uint16_t port) {
    sink* o = owner_of(listener);
    if (o == nullptr) {
        _stack->close(conn, true); // the listener is closing: nobody takes it
        return;
    }
    take(conn, nullptr);
    sockaddr_storage peer{};
    auto* in = reinterpret_cast<sockaddr_in*>(&peer);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(ip);
    in->sin_port = htons(port);
    const bool was = _from_loop;
    _from_loop = false;
    ++_events;
    o->on_accept(to_conn(listener), to_conn(conn), peer);
    _from_loop = was;
}

void stack_loop::on_connect(net::sock_id conn, int res) {
    if (!defer(ev_kind::connect, conn, res)) {
        dispatch(ev_kind::connect, conn, res, {});
    }
}

void stack_loop::on_recv(net::sock_id conn, std::span<const std::byte> data) {
    if (!defer(ev_kind::recv, conn, 0, data)) {
        dispatch(ev_kind::recv, conn, 0, data);
    }
}

void stack_loop::on_recv_end(net::sock_id conn, int res) {
    if (!defer(ev_kind::recv_end, conn, res)) {
        dispatch(ev_kind::recv_end, conn, res, {});
    }
}

void stack_loop::on_sent(net::sock_id conn, int res) {
    if (!defer(ev_kind::sent, conn, res)) {
        dispatch(ev_kind::sent, conn, res, {});
    }
}

void stack_loop::on_frame(std::span<const std::byte> frame) {
    _stack->input(frame, _now);
}

// --------------------------------------------------------------------------------------- loop

void stack_loop::publish() {
    _published_ns = _now;
    for (std::size_t i = 0; i < _net_published.size(); ++i) {
        _net_published[i].store(_stack->count(net::counter(i)), std::memory_order_relaxed);
    }
    _counters.set(stack_loop_counter::tcp_connections, _stack->connections());
}

unsigned stack_loop::run_once(uint64_t timeout_ns) {
    _port->flush(); // frames the owner's sends produced since the last pass
    _now = mono_ns();
    const uint64_t deadline = _now + timeout_ns;
    unsigned spins = 0;
    for (;;) {
        const uint64_t t0 = __rdtsc();
        _events = dispatch_deferred();
        _from_loop = true;
        const unsigned frames = _port->rx_burst(*this, k_rx_burst);
        _counters.add(stack_loop_counter::rx_frames, frames);
        _stack->run_timers(_now);
        _from_loop = false;
        if (_wake_pending.exchange(false, std::memory_order_acq_rel)) {
            ++_events;
            if (_on_wake) {
                _on_wake();
            }
        }
        _port->flush();
        _counters.add(stack_loop_counter::passes);
        if (frames != 0 || _events != 0) {
            _counters.add(stack_loop_counter::busy_passes);
            _counters.add(stack_loop_counter::busy_cycles, __rdtsc() - t0);
            if (_now - _published_ns >= k_publish_ns) {
                publish();
            }
            return _events + frames;
        }
        _now = mono_ns();
        if (_now - _published_ns >= k_publish_ns) {
            publish();
        }
        if (_now >= deadline) {
            return 0;
        }
        if (++spins < k_idle_spins) {
            continue;
        }
        // Idle: nap, but never past the stack's next timer or the caller's deadline.
        uint64_t nap = std::min(k_idle_nap_ns, deadline - _now);
        const uint64_t next = _stack->next_timer_ns();
        if (next <= _now) {
            continue;
        }
        nap = std::min(nap, next - _now);
        timespec ts{0, long(nap)};
        ::nanosleep(&ts, nullptr);
        _counters.add(stack_loop_counter::naps);
        _now = mono_ns();
    }
}

} // namespace apprelay::io
