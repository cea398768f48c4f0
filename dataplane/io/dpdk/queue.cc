#include "dataplane/io/dpdk/queue.hh"

#include "dataplane/io/dpdk/steer.hh"

#include <cassert>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_ring.h>

namespace apprelay::io::dpdk {

void rx_batch::release() noexcept {
    if (_count != 0) {
        rte_pktmbuf_free_bulk(_mbufs.data(), _count);
        _count = 0;
    }
}

tx_link::tx_link(uint16_t port_id, uint16_t queue_id, rte_mempool* pool,
                 queue_counter_block* counters, uint32_t loss_every)
    : _port_id(port_id), _queue_id(queue_id), _pool(pool), _counters(counters),
      _loss_every(loss_every) {}

tx_link::~tx_link() {
    // The port is stopped or going away: nothing more is sent, but nothing leaks either.
    if (_count != 0) {
        rte_pktmbuf_free_bulk(_pending.data(), _count);
        _counters->add(queue_counter::tx_dropped, _count);
        _count = 0;
    }
    if (_current != nullptr) {
        rte_pktmbuf_free(_current);
        _current = nullptr;
    }
}

std::span<std::byte> tx_link::tx_alloc(std::size_t len) {
    if (_current == nullptr) {
        _current = rte_pktmbuf_alloc(_pool);
        if (_current == nullptr) {
            _counters->add(queue_counter::tx_nobufs);
            return {};
        }
    }
    // A fresh mbuf (or a reused, uncommitted one: its lengths are still 0) has the whole data
    // room after the headroom; frames are single-segment.
    if (len > rte_pktmbuf_tailroom(_current)) {
        _counters->add(queue_counter::tx_too_large);
        return {};
    }
    _current_len = len;
    return {rte_pktmbuf_mtod(_current, std::byte*), len};
}

void tx_link::tx_commit(std::size_t len) {
    assert(_current != nullptr && len <= _current_len);
    rte_mbuf* m = _current;
    _current = nullptr;
    m->data_len = uint16_t(len);
    m->pkt_len = uint32_t(len);
    if (_loss_every != 0 && ++_loss_count == _loss_every) {
        _loss_count = 0;
        rte_pktmbuf_free(m);
        _counters->add(queue_counter::tx_loss_dropped);
        return;
    }
    _pending[_count++] = m;
    if (_count == k_tx_burst) {
        flush();
    }
}

void tx_link::flush() noexcept {
    if (_count == 0) {
        return;
    }
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < _count; ++i) {
        bytes += _pending[i]->pkt_len;
    }
    const uint16_t sent = rte_eth_tx_burst(_port_id, _queue_id, _pending.data(), _count);
    if (sent < _count) {
        // TX ring full: drop rather than hold (holding would stall the loop or grow without
        // bound); TCP retransmits, and the counter tells the operator the queue is too short.
        for (uint16_t i = sent; i < _count; ++i) {
            bytes -= _pending[i]->pkt_len;
        }
        rte_pktmbuf_free_bulk(&_pending[sent], _count - sent);
        _counters->add(queue_counter::tx_dropped, _count - sent);
    }
    _counters->add(queue_counter::tx_frames, sent);
    _counters->add(queue_counter::tx_bytes, bytes);
    _count = 0;
}

queue::queue(wiring w)
    : _w(std::move(w)), _tx(_w.port_id, _w.worker, _w.pool, &_counters, _w.loss_every),
      _out(_w.workers),
      _out_count(_w.workers, 0) {}

queue::~queue() = default;

bool queue::forward_copy(rte_mbuf* m, uint16_t to) noexcept {
    rte_mbuf* c = rte_pktmbuf_copy(m, _w.pool, 0, UINT32_MAX);
    if (c == nullptr) {
        return false;
    }
    if (rte_ring_sp_enqueue(_w.to[to], c) != 0) {
        rte_pktmbuf_free(c);
        return false;
    }
    return true;
}

uint16_t queue::steer(rte_mbuf** mbufs, uint16_t n) noexcept {
    uint16_t kept = 0;
    for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = mbufs[i];
        const std::span<const std::byte> f{rte_pktmbuf_mtod(m, const std::byte*), m->data_len};
        const frame_class c = classify_frame(f);
        if (c.kind == frame_kind::arp) {
            for (uint16_t w = 0; w < _w.workers; ++w) {
                if (w == _w.worker) {
                    continue;
                }
                if (forward_copy(m, w)) {
                    _counters.add(queue_counter::arp_copies);
                } else {
                    _counters.add(queue_counter::arp_copy_failed);
                }
            }
        } else if (c.kind == frame_kind::tcp_ipv4 && _w.mode == steering::software) {
            const uint16_t owner = owner_of(c.hash, _w.workers);
            if (owner != _w.worker) {
                _out[owner][_out_count[owner]++] = m;
                continue;
            }
        }
        mbufs[kept++] = m;
    }
    if (kept == n) {
        return kept;
    }
    for (uint16_t w = 0; w < _w.workers; ++w) {
        const uint16_t cnt = _out_count[w];
        if (cnt == 0) {
            continue;
        }
        _out_count[w] = 0;
        const unsigned done = rte_ring_sp_enqueue_burst(
            _w.to[w], reinterpret_cast<void* const*>(_out[w].data()), cnt, nullptr);
        _counters.add(queue_counter::steered_out, done);
        if (done < cnt) {
            rte_pktmbuf_free_bulk(&_out[w][done], cnt - done);
            _counters.add(queue_counter::steer_ring_full, cnt - done);
        }
    }
    return kept;
}

std::size_t queue::rx_burst(rx_batch& out) noexcept {
    assert(out._count == 0);
    uint16_t n = 0;
    const std::size_t rings = _w.from.size();
    if (rings != 0) {
        constexpr uint16_t k_ring_share = k_rx_burst / 2;
        for (std::size_t i = 0; i < rings && n < k_ring_share; ++i) {
            rte_ring* r = _w.from[(_next_ring + i) % rings];
            n += uint16_t(rte_ring_sc_dequeue_burst(r, reinterpret_cast<void**>(&out._mbufs[n]),
                                                    k_ring_share - n, nullptr));
        }
        _next_ring = uint16_t((_next_ring + 1) % rings);
        _counters.add(queue_counter::steered_in, n);
    }
    uint16_t got = rte_eth_rx_burst(_w.port_id, _w.worker, &out._mbufs[n], k_rx_burst - n);
    if (got != 0 && _w.workers > 1) {
        got = steer(&out._mbufs[n], got);
    }
    n += got;
    uint16_t kept = 0;
    uint64_t bytes = 0;
    for (uint16_t i = 0; i < n; ++i) {
        rte_mbuf* m = out._mbufs[i];
        if (m->nb_segs != 1) {
            rte_pktmbuf_free(m);
            _counters.add(queue_counter::rx_multiseg_dropped);
            continue;
        }
        if (_w.loss_every != 0 && ++_rx_loss_count == _w.loss_every) {
            _rx_loss_count = 0;
            rte_pktmbuf_free(m);
            _counters.add(queue_counter::rx_loss_dropped);
            continue;
        }
        out._mbufs[kept] = m;
        out._frames[kept] = {rte_pktmbuf_mtod(m, const std::byte*), m->data_len};
        bytes += m->data_len;
        ++kept;
    }
    out._count = kept;
    _counters.add(queue_counter::rx_frames, kept);
    _counters.add(queue_counter::rx_bytes, bytes);
    return kept;
}

} // namespace apprelay::io::dpdk
