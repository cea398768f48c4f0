#pragma once
// The BIO under every session, in both directions: a FIFO of fixed-size chunks whose bytes never
// move once written. Why not BIO_s_mem: its bytes move (every write after a partial read shifts
// the remainder to the front, growth reallocates and zero-fills), so a socket send could not
// point into it, and dropping a sent prefix costs a copy (BIO_read into scratch). Here appending
// copies once, a consumed prefix is dropped in O(1) (a drained chunk is recycled), and the first
// chunk's bytes stay put until consumed: the transport sends straight from them.
// Measured (harness demo, 200 streams x 4 MiB echoed, 2 shared cores): relay CPU 4.1 s -> 2.9 s,
// relay page faults ~60k -> ~18k (per-connection BIO_s_mem growth), 1.22x end-to-end.
//
// Not part of the public interface; nothing outside tls/ includes this.
#include <cstddef>
#include <cstdint>
#include <openssl/bio.h>
#include <span>

namespace apprelay::tls {
class chunk_pool;
}

namespace apprelay::tls::detail {

// Bytes [head, tail) of the data that follows the header are buffered; [0, head) are consumed.
struct chunk {
    chunk* next;
    uint32_t head;
    uint32_t tail;
    uint32_t cap;

    std::byte* data() noexcept { return reinterpret_cast<std::byte*>(this + 1); }
    const std::byte* data() const noexcept { return reinterpret_cast<const std::byte*>(this + 1); }
};

chunk* new_chunk(std::size_t cap) noexcept; // nullptr = out of memory
void delete_chunk(chunk* c) noexcept;

// Chunk sizes without a pool (clients: load generator, enrollment, tests). Input: one recv buffer
// (16 KiB, dataplane/io/uring/loop.hh) spans at most two, and an idle session's spare stays small.
// Output: such clients loop send() over pending_output(); one chunk holds what they let pend (the
// load generator stops encrypting at 256 KiB), so one call sends it, as BIO_s_mem allowed. Pages
// are touched only as they are written.
constexpr std::size_t k_input_chunk_bytes = 16 * 1024;
constexpr std::size_t k_output_chunk_bytes = 256 * 1024;

// What a FIFO does with the chunks it still holds when destroyed.
enum class on_destroy : uint8_t {
    // Back to the pool: output, whose first chunk a send may still be reading. The pool keeps it
    // as ciphertext-only memory (never handed to the allocator for plaintext meanwhile).
    pool,
    // To the allocator: input (the kernel never reads it). A tunnel handed over between workers
    // may be destroyed on the new worker's thread before it is moved to that worker's pool, with
    // input buffered but its output empty; only the latter may touch the old pool.
    allocator,
};

// Invariant: every chunk in the list holds at least one unconsumed byte, so front() is empty only
// when the whole FIFO is. Single thread; owned by its BIO (freed when the BIO is).
class chunk_fifo {
public:
    chunk_fifo(std::size_t chunk_bytes, on_destroy d) noexcept
        : _chunk_bytes(uint32_t(chunk_bytes)), _on_destroy(d) {}
    ~chunk_fifo();
    chunk_fifo(const chunk_fifo&) = delete;
    chunk_fifo& operator=(const chunk_fifo&) = delete;

    std::size_t size() const noexcept { return _size; }
    // The first chunk's unconsumed bytes; they stay in place until consumed.
    std::span<const std::byte> front() const noexcept {
        if (_head == nullptr) {
            return {};
        }
        return {_head->data() + _head->head, std::size_t(_head->tail - _head->head)};
    }
    // Copies src in; returns the bytes taken (short only when out of memory).
    std::size_t append(std::span<const std::byte> src) noexcept;
    // Copies up to dst.size() bytes out and consumes them; returns the bytes copied.
    std::size_t read(std::span<std::byte> dst) noexcept;
    // Drops the first n bytes (at most size()). O(1) within the first chunk.
    void consume(std::size_t n) noexcept;
    // New chunks come from pool (nullptr: the allocator, keeping one spare). Chunks of the pool's
    // size go back to it when drained.
    void set_pool(chunk_pool* pool) noexcept;

private:
    chunk* take() noexcept;
    void recycle(chunk* c) noexcept;
    void pop_front() noexcept;

    chunk* _head = nullptr;
    chunk* _tail = nullptr;
    chunk* _spare = nullptr; // without a pool: the last drained chunk, for the next append
    chunk_pool* _pool = nullptr;
    std::size_t _size = 0;
    uint32_t _chunk_bytes; // without a pool
    on_destroy _on_destroy;
};

// A source/sink BIO over a new chunk_fifo(chunk_bytes, d). *fifo receives the FIFO, valid
// until the BIO is freed. Writes append (never short but for out of memory); reads consume, and an
// empty FIFO reads as "retry" (never EOF: the socket owner decides when the stream ends).
// nullptr = out of memory.
BIO* new_chunk_bio(std::size_t chunk_bytes, on_destroy d, chunk_fifo** fifo);

} // namespace apprelay::tls::detail
