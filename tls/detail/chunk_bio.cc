#include "tls/detail/chunk_bio.hh"

#include "tls/session.hh"

#include <algorithm>
#include <cstring>
#include <new>

namespace apprelay::tls {

namespace detail {

chunk* new_chunk(std::size_t cap) noexcept {
    // Header and bytes in one block; the bytes are not initialised (every one is written before
    // it is read).
    void* p = ::operator new(sizeof(chunk) + cap, std::nothrow);
    if (p == nullptr) {
        return nullptr;
    }
    return new (p) chunk{nullptr, 0, 0, uint32_t(cap)};
}

void delete_chunk(chunk* c) noexcept {
    ::operator delete(static_cast<void*>(c));
}

} // namespace detail

chunk_pool::~chunk_pool() {
    while (_free != nullptr) {
        detail::chunk* c = _free;
        _free = c->next;
        detail::delete_chunk(c);
    }
}

detail::chunk* chunk_pool::get() noexcept {
    detail::chunk* c = _free;
    if (c == nullptr) {
        return detail::new_chunk(k_chunk_bytes);
    }
    _free = c->next;
    --_free_count;
    _min_free = std::min(_min_free, _free_count);
    return c;
}

std::size_t chunk_pool::trim_unused(std::size_t keep) noexcept {
    std::size_t n = _min_free > keep ? _min_free - keep : 0;
    const std::size_t released = n;
    while (n-- > 0 && _free != nullptr) {
        detail::chunk* c = _free;
        _free = c->next;
        --_free_count;
        detail::delete_chunk(c);
    }
    _min_free = _free_count;
    return released;
}

void chunk_pool::put(detail::chunk* c) noexcept {
    // Keep a bounded number around; more than that were a burst and go back to the allocator.
    if (_free_count >= k_max_free) {
        detail::delete_chunk(c);
        return;
    }
    c->next = _free;
    _free = c;
    ++_free_count;
}

namespace detail {

chunk_fifo::~chunk_fifo() {
    if (_on_destroy == on_destroy::allocator) {
        _pool = nullptr; // never touched from here (see on_destroy)
    }
    while (_head != nullptr) {
        pop_front();
    }
    if (_spare != nullptr) {
        delete_chunk(_spare);
    }
}

void chunk_fifo::set_pool(chunk_pool* pool) noexcept {
    _pool = pool;
    if (_pool != nullptr && _spare != nullptr) {
        delete_chunk(_spare);
        _spare = nullptr;
    }
}

chunk* chunk_fifo::take() noexcept {
    chunk* c = nullptr;
    if (_pool != nullptr) {
        c = _pool->get();
    } else if (_spare != nullptr) {
        c = _spare;
        _spare = nullptr;
    } else {
        c = new_chunk(_chunk_bytes);
    }
    if (c != nullptr) {
        c->next = nullptr;
        c->head = 0;
        c->tail = 0;
    }
    return c;
}

void chunk_fifo::recycle(chunk* c) noexcept {
    if (_pool != nullptr && c->cap == chunk_pool::k_chunk_bytes) {
        _pool->put(c);
    } else if (_pool == nullptr && _spare == nullptr && c->cap == _chunk_bytes) {
        _spare = c;
    } else {
        delete_chunk(c);
    }
}

void chunk_fifo::pop_front() noexcept {
    chunk* c = _head;
    _head = c->next;
    if (_head == nullptr) {
        _tail = nullptr;
    }
    recycle(c);
}

std::size_t chunk_fifo::append(std::span<const std::byte> src) noexcept {
    std::size_t done = 0;
    while (done < src.size()) {
        if (_tail == nullptr || _tail->tail == _tail->cap) {
            chunk* c = take();
            if (c == nullptr) {
                break;
            }
            if (_tail == nullptr) {
                _head = c;
            } else {
                _tail->next = c;
            }
            _tail = c;
        }
        std::size_t n = std::min<std::size_t>(_tail->cap - _tail->tail, src.size() - done);
        std::memcpy(_tail->data() + _tail->tail, src.data() + done, n);
        _tail->tail += uint32_t(n);
        done += n;
    }
    _size += done;
    return done;
}

std::size_t chunk_fifo::read(std::span<std::byte> dst) noexcept {
    std::size_t done = 0;
    while (done < dst.size() && _head != nullptr) {
        chunk* c = _head;
        std::size_t n = std::min<std::size_t>(c->tail - c->head, dst.size() - done);
        std::memcpy(dst.data() + done, c->data() + c->head, n);
        c->head += uint32_t(n);
        done += n;
        if (c->head == c->tail) {
            pop_front();
        }
    }
    _size -= done;
    return done;
}

void chunk_fifo::consume(std::size_t n) noexcept {
    n = std::min(n, _size);
    _size -= n;
    while (n > 0) {
        chunk* c = _head;
        std::size_t avail = c->tail - c->head;
        if (n < avail) {
            c->head += uint32_t(n);
            return;
        }
        n -= avail;
        pop_front();
    }
}

namespace {

chunk_fifo* fifo_of(BIO* b) {
    return static_cast<chunk_fifo*>(BIO_get_data(b));
}

int chunk_write(BIO* b, const char* data, std::size_t len, std::size_t* written) {
    BIO_clear_retry_flags(b);
    std::size_t n = fifo_of(b)->append({reinterpret_cast<const std::byte*>(data), len});
    *written = n;
    // Short only when out of memory: no retry flag, so the SSL call fails instead of spinning.
    return n > 0 || len == 0 ? 1 : 0;
}

int chunk_read(BIO* b, char* data, std::size_t len, std::size_t* readbytes) {
    BIO_clear_retry_flags(b);
    std::size_t n = fifo_of(b)->read({reinterpret_cast<std::byte*>(data), len});
    *readbytes = n;
    if (n == 0 && len > 0) {
        BIO_set_retry_read(b); // empty: WANT_READ, never EOF
        return 0;
    }
    return 1;
}

long chunk_ctrl(BIO* b, int cmd, long, void*) {
    switch (cmd) {
    case BIO_CTRL_FLUSH: // every byte is already where the owner picks it up
        return 1;
    case BIO_CTRL_PENDING:
        return long(fifo_of(b)->size());
    default: // EOF, WPENDING, KTLS queries, PUSH/POP of the handshake buffer: 0 = no / ignored
        return 0;
    }
}

int chunk_destroy(BIO* b) {
    delete fifo_of(b);
    BIO_set_data(b, nullptr);
    BIO_set_init(b, 0);
    return 1;
}

BIO_METHOD* make_method() {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "apprelay chunks");
    if (m == nullptr) {
        return nullptr;
    }
    if (BIO_meth_set_write_ex(m, chunk_write) != 1 || BIO_meth_set_read_ex(m, chunk_read) != 1 ||
        BIO_meth_set_ctrl(m, chunk_ctrl) != 1 || BIO_meth_set_destroy(m, chunk_destroy) != 1) {
        BIO_meth_free(m);
        return nullptr;
    }
    return m;
}

} // namespace

BIO* new_chunk_bio(std::size_t chunk_bytes, on_destroy d, chunk_fifo** fifo) {
    // Built once per process (thread-safe static initialisation), kept for its lifetime.
    static BIO_METHOD* const method = make_method();
    if (method == nullptr) {
        return nullptr;
    }
    BIO* b = BIO_new(method);
    if (b == nullptr) {
        return nullptr;
    }
    auto* f = new (std::nothrow) chunk_fifo(chunk_bytes, d);
    if (f == nullptr) {
        BIO_free(b);
        return nullptr;
    }
    BIO_set_data(b, f);
    BIO_set_init(b, 1);
    *fifo = f;
    return b;
}

} // namespace detail

} // namespace apprelay::tls
