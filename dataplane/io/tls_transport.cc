#include "dataplane/io/tls_transport.hh"

#include <cstring>

namespace apprelay::io {

std::vector<std::byte>* send_buffer_pool::get() {
    if (!_free.empty()) {
        auto* b = _free.back();
        _free.pop_back();
        return b;
    }
    return new std::vector<std::byte>(k_buffer_size);
}

void send_buffer_pool::put(std::vector<std::byte>* b) {
    // Keep a bounded number around; more than that were a burst and go back to the allocator.
    if (_free.size() < 256) {
        _free.push_back(b);
    } else {
        delete b;
    }
}

send_buffer_pool::~send_buffer_pool() {
    for (auto* b : _free) {
        delete b;
    }
}

tls_transport::~tls_transport() {
    release();
}

void tls_transport::release() {
    if (_buf != nullptr) {
        _pool->put(_buf);
        _buf = nullptr;
    }
    _off = 0;
    _len = 0;
}

void tls_transport::rebind(uring_loop* loop, conn_id id, send_buffer_pool* pool) {
    release();
    _loop = loop;
    _id = id;
    _pool = pool;
}

std::size_t tls_transport::queued() const noexcept {
    return _tls->pending_output_size() + (_len - _off);
}

void tls_transport::flush() {
    if (_buf != nullptr || _tls->pending_output_size() == 0) {
        return;
    }
    _buf = _pool->get();
    std::size_t n = 0;
    while (n < _buf->size()) {
        auto out = _tls->pending_output();
        if (out.empty()) {
            break;
        }
        std::size_t take = std::min(out.size(), _buf->size() - n);
        std::memcpy(_buf->data() + n, out.data(), take);
        _tls->consume_output(take);
        n += take;
    }
    _off = 0;
    _len = n;
    if (!_loop->send(_id, std::span<const std::byte>(_buf->data(), _len))) {
        release(); // stale id: the connection is closing anyway
    }
}

bool tls_transport::on_sent(int res) {
    if (_buf == nullptr) {
        return res >= 0;
    }
    if (res < 0) {
        release();
        return false;
    }
    _off += std::size_t(res);
    if (_off < _len) {
        if (!_loop->send(_id, std::span<const std::byte>(_buf->data() + _off, _len - _off))) {
            release();
        }
        return true;
    }
    release();
    flush();
    return true;
}

} // namespace apprelay::io
