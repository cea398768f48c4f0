#pragma once
// Tunnel frame codec (relay <-> connector). Wire format and every MUST: SPEC.md beside this file.
// Frame: | u8 type | u8 flags | u16 reserved=0 | u32 stream_id | u32 length | payload[length] |
// big-endian. Decoding validates every field before anything is buffered or allocated; decoded
// payload structs hold string_views into the input (valid while the input is).
#include "dataplane/base/result.hh"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

namespace apprelay::tunnel {

constexpr std::size_t k_header_size = 12;
constexpr uint32_t k_default_max_frame = 16 * 1024;
constexpr uint32_t k_hard_max_frame = 1024 * 1024;
constexpr uint32_t k_max_window = 0x7fffffff;
constexpr uint16_t k_proto_version = 1;
constexpr uint16_t k_any_worker = 0xFFFF;

enum class frame_type : uint8_t {
    hello = 1,
    hello_ack = 2,
    open = 3,
    open_ack = 4,
    open_fail = 5,
    data = 6,
    window = 7,
    fin = 8,
    rst = 9,
    ping = 10,
    pong = 11,
    goaway = 12,
    config = 13,
};
std::string_view to_string(frame_type t) noexcept;

// Reasons carried by OPEN_FAIL, RST and GOAWAY.
enum class reason : uint16_t {
    no_error = 0,
    protocol_error = 1,
    flow_control = 2,
    stream_limit = 3,
    refused = 4,     // backend refused the connection
    unreachable = 5, // backend unreachable / cannot resolve
    timed_out = 6,
    cancelled = 7,
    not_allowed = 8,
    internal = 9,
    shutting_down = 10,
    rate_limited = 11,
    unknown_app = 12,
    no_connector = 13,
    version_too_old = 14,
};
std::string_view to_string(reason r) noexcept;

struct frame_header {
    frame_type type = frame_type::data;
    uint8_t flags = 0;
    uint32_t stream_id = 0;
    uint32_t length = 0;
};

struct hello {
    uint16_t proto_version = k_proto_version;
    uint16_t worker_index = k_any_worker;
    uint32_t max_frame = k_default_max_frame;
    uint32_t initial_window = 256 * 1024;
    std::string_view connector_id;
    std::string_view connector_version;
};

struct hello_ack {
    uint16_t proto_version = k_proto_version;
    uint16_t worker_index = 0;
    uint16_t worker_count = 1;
    uint32_t max_frame = k_default_max_frame;
    uint32_t initial_window = 256 * 1024;
    uint32_t max_streams = 4096;
    uint32_t ping_interval_ms = 1000;
    std::string_view latest_version;
    std::string_view min_version;
};

struct open_frame {
    std::string_view app;
    std::string_view target; // host:port
};

struct reason_frame { // OPEN_FAIL and RST
    reason code = reason::no_error;
    std::string_view message;
};

struct goaway_frame {
    uint32_t last_stream_id = 0;
    reason code = reason::no_error;
    std::string_view message;
};

// Names per frame type for the shared payload layouts.
using open_fail_frame = reason_frame;
using rst_frame = reason_frame;

struct config_frame {
    uint64_t version = 0;
    std::span<const std::byte> body;
};

// Header: errc::again if fewer than 12 bytes; errc::frame_too_large if length > max_frame;
// errc::protocol_error for a non-zero reserved field, unknown type, non-zero flags, or a stream
// id that does not fit the type (0 for stream frames, non-zero for tunnel frames).
result<frame_header> decode_header(std::span<const std::byte> in, uint32_t max_frame) noexcept;

// Payload decoders: exact sizes, string bounds; errc::protocol_error with a detail on violation.
result<hello> decode_hello(std::span<const std::byte> p) noexcept;
result<hello_ack> decode_hello_ack(std::span<const std::byte> p) noexcept;
result<open_frame> decode_open(std::span<const std::byte> p) noexcept;
result<reason_frame> decode_reason(std::span<const std::byte> p) noexcept; // OPEN_FAIL, RST
result<uint32_t> decode_window(std::span<const std::byte> p) noexcept;     // increment, not 0
result<uint64_t> decode_ping(std::span<const std::byte> p) noexcept;       // PING, PONG
result<goaway_frame> decode_goaway(std::span<const std::byte> p) noexcept;
result<config_frame> decode_config(std::span<const std::byte> p) noexcept;
inline result<reason_frame> decode_open_fail(std::span<const std::byte> p) noexcept {
    return decode_reason(p);
}
inline result<reason_frame> decode_rst(std::span<const std::byte> p) noexcept {
    return decode_reason(p);
}
inline result<uint64_t> decode_pong(std::span<const std::byte> p) noexcept {
    return decode_ping(p);
}

// Encoders write one whole frame (header + payload) into out and return the bytes written, or
// 0 if it does not fit (nothing written then). Strings longer than 255 bytes are truncated.
std::size_t encode_hello(std::span<std::byte> out, const hello& h) noexcept;
std::size_t encode_hello_ack(std::span<std::byte> out, const hello_ack& h) noexcept;
std::size_t encode_open(std::span<std::byte> out, uint32_t sid, const open_frame& o) noexcept;
std::size_t encode_open_ack(std::span<std::byte> out, uint32_t sid) noexcept;
std::size_t encode_open_fail(std::span<std::byte> out, uint32_t sid,
                             const reason_frame& r) noexcept;
std::size_t encode_rst(std::span<std::byte> out, uint32_t sid, const reason_frame& r) noexcept;
std::size_t encode_window(std::span<std::byte> out, uint32_t sid, uint32_t increment) noexcept;
std::size_t encode_fin(std::span<std::byte> out, uint32_t sid) noexcept;
std::size_t encode_ping(std::span<std::byte> out, uint64_t opaque) noexcept;
std::size_t encode_pong(std::span<std::byte> out, uint64_t opaque) noexcept;
std::size_t encode_goaway(std::span<std::byte> out, const goaway_frame& g) noexcept;
std::size_t encode_config(std::span<std::byte> out, uint64_t version,
                          std::span<const std::byte> body) noexcept;
// DATA: writes only the 12-byte header; the caller puts `length` payload bytes right after it.
std::size_t encode_data_header(std::span<std::byte> out, uint32_t sid, uint32_t length) noexcept;

// Streaming decoder over arbitrary chunks. Whole frames inside the input chunk are returned as
// views into it (no copy); only a frame split across chunks is assembled in an internal buffer
// of at most k_header_size + max_frame bytes, reserved once at construction.
class frame_decoder {
public:
    explicit frame_decoder(uint32_t max_frame = k_default_max_frame);
    struct frame {
        frame_header header;
        std::span<const std::byte> payload;
    };
    // Begin consuming a new chunk (the previous chunk's views become invalid).
    void feed(std::span<const std::byte> chunk) noexcept;
    // Next complete frame: ok(frame), errc::again when the chunk is used up, or a header error
    // (after which the decoder is unusable: the tunnel closes).
    result<frame> next() noexcept;
    void set_max_frame(uint32_t max_frame) noexcept; // after HELLO negotiation (≤ construction)
    uint32_t max_frame() const noexcept { return _max_frame; }

private:
    uint32_t _max_frame;
    std::unique_ptr<std::byte[]> _buf; // partial frame assembly
    std::size_t _have = 0;
    std::span<const std::byte> _chunk;
    bool _failed = false;
};

} // namespace apprelay::tunnel
