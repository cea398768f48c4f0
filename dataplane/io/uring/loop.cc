#include "dataplane/io/uring/loop.hh"

#include "dataplane/base/log.hh"

#include <cerrno>
#include <cstring>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

namespace apprelay::io {

// user_data layout: | op:8 | gen:24 | index:32 |. The generation rejects completions that
// belong to an earlier owner of a reused slot.
enum class uring_loop::op : uint8_t { accept = 1, recv, send, connect, cancel, wake };

namespace {
constexpr unsigned k_gen_bits = 24;
constexpr uint32_t k_gen_mask = (1u << k_gen_bits) - 1;
constexpr uint16_t k_bgid = 0;
// CQEs copied out per batch before dispatch, so callbacks may submit freely meanwhile.
constexpr unsigned k_cqe_batch = 256;

uint64_t pack(uint8_t o, uint32_t gen, uint32_t index) {
    return (uint64_t(o) << 56) | (uint64_t(gen & k_gen_mask) << 32) | index;
}
static_assert(sizeof(uint64_t) == sizeof(((io_uring_cqe*)nullptr)->user_data),
              "user_data must carry op, generation and slot index");
} // namespace

struct uring_loop::slot {
    int fd = -1;
    sink* owner = nullptr;
    uint32_t gen = 0;
    uint32_t inflight = 0; // operations that will still post a final CQE
    bool in_use = false;
    bool listener = false;
    bool recv_armed = false;
    bool recv_wanted = false;
    bool send_inflight = false;
    bool closing = false;
    bool detaching = false;
    bool abort = false;
    bool released_check = false;
    uint32_t flow_period = 0; // last coalescing period in which this socket received bytes
    // connect(): the address the SQE points at, until the connect completes. On the heap, not in
    // the slot: _slots may grow (and move) before the SQE is submitted.
    std::unique_ptr<sockaddr_storage> addr;
};

uring_loop::~uring_loop() {
    if (_ring) {
        for (auto& s : _slots) {
            if (s.in_use && s.fd >= 0) {
                ::close(s.fd);
            }
        }
        if (_br) {
            io_uring_unregister_buf_ring(_ring.get(), k_bgid);
        }
        io_uring_queue_exit(_ring.get());
    }
    if (_br) {
        munmap(_br, _br_bytes);
    }
    delete[] _bufs;
    if (_wake_fd >= 0) {
        ::close(_wake_fd);
    }
}

result<std::unique_ptr<uring_loop>> uring_loop::create(const loop_options& opts, std::string* why) {
    std::unique_ptr<uring_loop> l(new uring_loop());
    auto r = l->init(opts, why);
    if (!r) {
        return r.err();
    }
    return l;
}

result<void> uring_loop::init(const loop_options& opts, std::string* why) {
    if (opts.buf_count == 0 || (opts.buf_count & (opts.buf_count - 1)) != 0) {
        *why = "buf_count must be a power of two";
        return errc::invalid_argument;
    }
    _ring = std::make_unique<io_uring>();
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
    p.cq_entries = opts.entries * 2;
    int rc = io_uring_queue_init_params(opts.entries, _ring.get(), &p);
    if (rc < 0) {
        *why = std::string("io_uring_queue_init: ") + std::strerror(-rc);
        _ring.reset();
        return errc::io_error;
    }
    // Provided buffer ring by hand (io_uring_setup_buf_ring is liburing 2.4+).
    _buf_count = opts.buf_count;
    _buf_size = opts.buf_size;
    _br_bytes = std::size_t(_buf_count) * sizeof(io_uring_buf);
    void* mem =
        mmap(nullptr, _br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) {
        *why = std::string("mmap buffer ring: ") + std::strerror(errno);
        return errc::no_memory;
    }
    _br = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(_br);
    reg.ring_entries = _buf_count;
    reg.bgid = k_bgid;
    rc = io_uring_register_buf_ring(_ring.get(), &reg, 0);
    if (rc < 0) {
        *why = std::string("io_uring_register_buf_ring: ") + std::strerror(-rc);
        munmap(_br, _br_bytes);
        _br = nullptr;
        return errc::io_error;
    }
    _bufs = new std::byte[std::size_t(_buf_count) * _buf_size];
    io_uring_buf_ring_init(_br);
    const int mask = io_uring_buf_ring_mask(_buf_count);
    for (unsigned i = 0; i < _buf_count; ++i) {
        io_uring_buf_ring_add(_br, _bufs + std::size_t(i) * _buf_size, _buf_size, uint16_t(i), mask,
                              int(i));
    }
    io_uring_buf_ring_advance(_br, int(_buf_count));

    _wake_fd = eventfd(0, EFD_CLOEXEC);
    if (_wake_fd < 0) {
        *why = std::string("eventfd: ") + std::strerror(errno);
        return errc::io_error;
    }
    _slots.reserve(1024);
    arm_wake();
    return {};
}

void* uring_loop::get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(_ring.get());
    if (sqe == nullptr) {
        ++_stats.sq_full_submits;
        io_uring_submit(_ring.get());
        sqe = io_uring_get_sqe(_ring.get());
    }
    return sqe; // non-null: the SQ was just emptied
}

result<uint32_t> uring_loop::alloc_slot(int fd, sink* owner) {
    uint32_t index;
    if (!_free.empty()) {
        index = _free.back();
        _free.pop_back();
    } else {
        if (_slots.size() >= UINT32_MAX - 1) {
            return errc::no_memory;
        }
        index = uint32_t(_slots.size());
        _slots.emplace_back();
    }
    slot& s = _slots[index];
    uint32_t gen = s.gen;
    s = slot{};
    s.gen = gen;
    s.fd = fd;
    s.owner = owner;
    s.in_use = true;
    ++_open;
    return index;
}

uring_loop::slot* uring_loop::live(conn_id id) {
    if (id.index >= _slots.size()) {
        return nullptr;
    }
    slot& s = _slots[id.index];
    if (!s.in_use || s.gen != id.gen || s.closing || s.detaching) {
        return nullptr;
    }
    return &s;
}

const uring_loop::slot* uring_loop::live(conn_id id) const {
    return const_cast<uring_loop*>(this)->live(id);
}

result<conn_id> uring_loop::listen(const listen_spec& spec, sink* owner) {
    if (spec.fd < 0) {
        return error(errc::invalid_argument, "uring listener needs a bound socket");
    }
    auto r = alloc_slot(spec.fd, owner);
    if (!r) {
        return r.err();
    }
    _slots[*r].listener = true;
    arm_accept(*r);
    return conn_id{*r, _slots[*r].gen};
}

result<conn_id> uring_loop::adopt(int fd, sink* owner) {
    auto r = alloc_slot(fd, owner);
    if (!r) {
        return r.err();
    }
    return conn_id{*r, _slots[*r].gen};
}

result<conn_id> uring_loop::connect(const sockaddr* addr, socklen_t len, sink* owner) {
    if (len > sizeof(sockaddr_storage)) {
        return errc::invalid_argument;
    }
    int fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return error(errc::io_error, "socket() failed");
    }
    auto r = alloc_slot(fd, owner);
    if (!r) {
        ::close(fd);
        return r.err();
    }
    auto stored = std::make_unique<sockaddr_storage>();
    std::memcpy(stored.get(), addr, len);
    slot& s = _slots[*r];
    s.addr = std::move(stored);
    auto* sqe = static_cast<io_uring_sqe*>(get_sqe());
    io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(s.addr.get()), len);
    io_uring_sqe_set_data64(sqe, pack(uint8_t(op::connect), s.gen, *r));
    ++s.inflight;
    return conn_id{*r, s.gen};
}

void uring_loop::arm_accept(uint32_t index) {
    slot& s = _slots[index];
    auto* sqe = static_cast<io_uring_sqe*>(get_sqe());
    io_uring_prep_multishot_accept(sqe, s.fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, pack(uint8_t(op::accept), s.gen, index));
    ++s.inflight;
}

void uring_loop::arm_recv(uint32_t index) {
    slot& s = _slots[index];
    auto* sqe = static_cast<io_uring_sqe*>(get_sqe());
    io_uring_prep_recv_multishot(sqe, s.fd, nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = k_bgid;
    io_uring_sqe_set_data64(sqe, pack(uint8_t(op::recv), s.gen, index));
    s.recv_armed = true;
    ++s.inflight;
}

void uring_loop::arm_wake() {
    auto* sqe = static_cast<io_uring_sqe*>(get_sqe());
    io_uring_prep_read(sqe, _wake_fd, &_wake_buf, sizeof _wake_buf, 0);
    io_uring_sqe_set_data64(sqe, pack(uint8_t(op::wake), 0, 0));
}

void uring_loop::submit_cancel(uint32_t index, op o) {
    slot& s = _slots[index];
    auto* sqe = static_cast<io_uring_sqe*>(get_sqe());
    io_uring_prep_cancel64(sqe, pack(uint8_t(o), s.gen, index), 0);
    io_uring_sqe_set_data64(sqe, pack(uint8_t(op::cancel), s.gen, index));
    ++s.inflight;
}

void uring_loop::start_recv(conn_id id) {
    slot* s = live(id);
    if (s == nullptr) {
        return;
    }
    s->recv_wanted = true;
    if (!s->recv_armed) {
        arm_recv(id.index);
    }
}

void uring_loop::pause_recv(conn_id id) {
    slot* s = live(id);
    if (s == nullptr || !s->recv_wanted) {
        return;
    }
    s->recv_wanted = false;
    if (s->recv_armed) {
        submit_cancel(id.index, op::recv);
    }
}

bool uring_loop::recv_wanted(conn_id id) const {
    const slot* s = live(id);
    return s != nullptr && s->recv_wanted;
}

bool uring_loop::send(conn_id id, std::span<const std::byte> data) {
    slot* s = live(id);
    if (s == nullptr || s->send_inflight) {
        return false;
    }
    auto* sqe = static_cast<io_uring_sqe*>(get_sqe());
    // MSG_WAITALL: the kernel retries until every byte is sent (no short sends on a healthy
    // socket), so one SQE per buffer.
    io_uring_prep_send(sqe, s->fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, pack(uint8_t(op::send), s->gen, id.index));
    s->send_inflight = true;
    ++s->inflight;
    return true;
}

bool uring_loop::send_in_flight(conn_id id) const {
    const slot* s = live(id);
    return s != nullptr && s->send_inflight;
}

void uring_loop::close(conn_id id, bool abort) {
    slot* s = live(id);
    if (s == nullptr) {
        return;
    }
    s->closing = true;
    s->abort = abort;
    s->recv_wanted = false;
    if (s->recv_armed || s->listener) {
        submit_cancel(id.index, s->listener ? op::accept : op::recv);
    }
    if (s->send_inflight) {
        submit_cancel(id.index, op::send);
    }
    maybe_release(id.index);
}

void uring_loop::shutdown_write(conn_id id) {
    slot* s = live(id);
    if (s != nullptr) {
        ::shutdown(s->fd, SHUT_WR);
    }
}

void uring_loop::detach(conn_id id) {
    slot* s = live(id);
    if (s == nullptr) {
        return;
    }
    s->detaching = true;
    s->recv_wanted = false;
    if (s->recv_armed) {
        submit_cancel(id.index, op::recv);
    }
    maybe_release(id.index);
}

void uring_loop::set_owner(conn_id id, sink* owner) {
    if (slot* s = live(id)) {
        s->owner = owner;
    }
}

void uring_loop::maybe_release(uint32_t index) {
    slot& s = _slots[index];
    if (!s.in_use || !(s.closing || s.detaching) || s.inflight != 0) {
        return;
    }
    conn_id id{index, s.gen};
    int fd = s.fd;
    sink* owner = s.owner;
    bool detaching = s.detaching && !s.closing;
    if (!detaching) {
        if (s.abort) {
            linger lg{1, 0};
            ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        ::close(fd);
    }
    s.in_use = false;
    s.fd = -1;
    s.owner = nullptr;
    s.gen = (s.gen + 1) & k_gen_mask;
    _free.push_back(index);
    --_open;
    if (detaching && owner != nullptr) {
        owner->on_detached(id, fd);
    }
}

void uring_loop::accepted(conn_id listener, int fd) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
        ::close(fd); // already reset by the peer
        return;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto r = alloc_slot(fd, nullptr);
    if (!r) {
        ::close(fd);
        return;
    }
    conn_id id{*r, _slots[*r].gen};
    _slots[listener.index].owner->on_accept(listener, id, peer);
}

void uring_loop::wake() noexcept {
    if (!_wake_pending.exchange(true, std::memory_order_acq_rel)) {
        uint64_t one = 1;
        ssize_t n = ::write(_wake_fd, &one, sizeof one);
        (void)n;
    }
}

void uring_loop::dispatch(uint64_t ud, int res, uint32_t flags) {
    const auto o = op(ud >> 56);
    const uint32_t gen = uint32_t(ud >> 32) & k_gen_mask;
    const uint32_t index = uint32_t(ud);
    if (o == op::wake) {
        _wake_pending.store(false, std::memory_order_release);
        arm_wake();
        if (_on_wake) {
            _on_wake();
        }
        return;
    }
    // A provided buffer must go back to the ring whatever happens to its socket.
    std::byte* buf = nullptr;
    uint16_t bid = 0;
    if (flags & IORING_CQE_F_BUFFER) {
        bid = uint16_t(flags >> IORING_CQE_BUFFER_SHIFT);
        buf = _bufs + std::size_t(bid) * _buf_size;
    }
    const bool more = (flags & IORING_CQE_F_MORE) != 0;
    if (index >= _slots.size() || !_slots[index].in_use || _slots[index].gen != gen) {
        // Cannot happen: slots are released only once every operation has posted its final
        // completion. Recycle the buffer and ignore.
        if (buf) {
            io_uring_buf_ring_add(_br, buf, _buf_size, bid, io_uring_buf_ring_mask(_buf_count), 0);
            io_uring_buf_ring_advance(_br, 1);
        }
        return;
    }
    conn_id id{index, gen};
    auto active = [&] {
        slot& s = _slots[index];
        return s.in_use && s.gen == gen && !s.closing && !s.detaching && s.owner != nullptr;
    };
    switch (o) {
    case op::accept: {
        slot& s = _slots[index];
        if (!more) {
            --s.inflight;
        }
        if (res >= 0) {
            if (active()) {
                accepted(id, res); // may grow _slots: `s` is not used after this
            } else {
                ::close(res);
            }
        }
        if (!more && active()) {
            arm_accept(index); // multishot ended (e.g. EMFILE): re-arm
        }
        break;
    }
    case op::recv: {
        slot& s = _slots[index];
        if (res > 0 && s.flow_period != _flow_period) {
            s.flow_period = _flow_period;
            ++_period_flows;
        }
        if (!more) {
            --s.inflight;
            s.recv_armed = false;
        }
        if (res > 0 && buf != nullptr && active()) {
            s.owner->on_recv(id, std::span<const std::byte>(buf, std::size_t(res)));
        }
        if (buf) {
            io_uring_buf_ring_add(_br, buf, _buf_size, bid, io_uring_buf_ring_mask(_buf_count), 0);
            io_uring_buf_ring_advance(_br, 1);
        }
        if (!more && active()) {
            slot& s2 = _slots[index];
            if (res == 0) {
                s2.recv_wanted = false;
                s2.owner->on_recv_end(id, 0);
            } else if (res == -ENOBUFS) {
                ++_stats.recv_nobufs;
                if (s2.recv_wanted) {
                    arm_recv(index);
                }
            } else if (res == -ECANCELED || res > 0) {
                if (s2.recv_wanted && !s2.recv_armed) {
                    arm_recv(index);
                }
            } else if (res < 0) {
                s2.recv_wanted = false;
                s2.owner->on_recv_end(id, res);
            }
        }
        break;
    }
    case op::send: {
        slot& s = _slots[index];
        --s.inflight;
        s.send_inflight = false;
        if (active()) {
            s.owner->on_sent(id, res);
        }
        break;
    }
    case op::connect: {
        slot& s = _slots[index];
        --s.inflight;
        s.addr.reset();
        if (active()) {
            if (res == 0) {
                int one = 1;
                ::setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
            s.owner->on_connect(id, res);
        }
        break;
    }
    case op::cancel:
        --_slots[index].inflight;
        break;
    case op::wake:
        break;
    }
    maybe_release(index);
}

void uring_loop::roll_flow_period() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
    if (now - _period_start_ns >= k_flow_period_ns) {
        _recent_flows = _period_flows;
        _period_flows = 0;
        ++_flow_period;
        _period_start_ns = now;
    }
}

unsigned uring_loop::run_once(uint64_t timeout_ns) {
    io_uring* ring = _ring.get();
    if (timeout_ns != 0 && _coalesce_ns != 0) {
        // The gate is read only before a blocking wait, so only then is the clock read.
        roll_flow_period();
    }
    if (timeout_ns == 0) {
        io_uring_submit_and_get_events(ring);
    } else {
        __kernel_timespec ts{};
        ts.tv_sec = int64_t(timeout_ns / 1'000'000'000ull);
        ts.tv_nsec = int64_t(timeout_ns % 1'000'000'000ull);
        io_uring_cqe* cqe = nullptr;
        ++_stats.waits;
        io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nullptr);
        if (_coalesce_ns != 0 && _recent_flows >= k_coalesce_min_flows &&
            io_uring_cq_ready(ring) < _coalesce_min) {
            // With DEFER_TASKRUN the kernel wakes us only once _coalesce_min completions are
            // ready (or the window ends): no wake-up per event meanwhile.
            __kernel_timespec window{};
            window.tv_nsec = int64_t(_coalesce_ns % 1'000'000'000ull);
            window.tv_sec = int64_t(_coalesce_ns / 1'000'000'000ull);
            ++_stats.coalesce_waits;
            io_uring_submit_and_wait_timeout(ring, &cqe, _coalesce_min, &window, nullptr);
        }
    }
    unsigned total = 0;
    struct item {
        uint64_t ud;
        int res;
        uint32_t flags;
    };
    item batch[k_cqe_batch];
    for (;;) {
        unsigned n = 0;
        unsigned head;
        io_uring_cqe* cqe;
        io_uring_for_each_cqe(ring, head, cqe) {
            batch[n++] = item{cqe->user_data, cqe->res, cqe->flags};
            if (n == k_cqe_batch) {
                break;
            }
        }
        if (n == 0) {
            break;
        }
        io_uring_cq_advance(ring, n);
        for (unsigned i = 0; i < n; ++i) {
            dispatch(batch[i].ud, batch[i].res, batch[i].flags);
        }
        total += n;
        if (n < k_cqe_batch) {
            break;
        }
    }
    _stats.cqes += total;
    return total;
}

} // namespace apprelay::io
