// Tunnel frame codec. Wire format and the numbered MUSTs (Mn) checked here: SPEC.md.
#include "dataplane/tunnel/frame.hh"

#include <algorithm>
#include <cstring>

namespace apprelay::tunnel {

namespace {

constexpr std::size_t k_max_str = 255; // str = u8 length + bytes

// Big-endian readers/writers over raw bytes; callers have checked the bounds.
uint16_t load16(const std::byte* p) noexcept {
    return static_cast<uint16_t>((std::to_integer<uint16_t>(p[0]) << 8) |
                                 std::to_integer<uint16_t>(p[1]));
}

uint32_t load32(const std::byte* p) noexcept {
    return (std::to_integer<uint32_t>(p[0]) << 24) | (std::to_integer<uint32_t>(p[1]) << 16) |
           (std::to_integer<uint32_t>(p[2]) << 8) | std::to_integer<uint32_t>(p[3]);
}

uint64_t load64(const std::byte* p) noexcept {
    return (uint64_t{load32(p)} << 32) | load32(p + 4);
}

// Bounds-checked cursor over a payload. Any short read latches `bad`; callers check once at end.
class reader {
public:
    explicit reader(std::span<const std::byte> p) noexcept : _p(p) {}

    uint16_t u16() noexcept {
        if (!take(2)) {
            return 0;
        }
        return load16(_p.data() + _pos - 2);
    }
    uint32_t u32() noexcept {
        if (!take(4)) {
            return 0;
        }
        return load32(_p.data() + _pos - 4);
    }
    uint64_t u64() noexcept {
        if (!take(8)) {
            return 0;
        }
        return load64(_p.data() + _pos - 8);
    }
    std::string_view str() noexcept {
        if (!take(1)) {
            return {};
        }
        std::size_t n = std::to_integer<std::size_t>(_p[_pos - 1]);
        if (!take(n)) {
            return {};
        }
        return {reinterpret_cast<const char*>(_p.data() + _pos - n), n};
    }
    std::span<const std::byte> rest() noexcept {
        auto r = _p.subspan(_pos);
        _pos = _p.size();
        return r;
    }
    bool bad() const noexcept { return _bad; }
    bool done() const noexcept { return _pos == _p.size(); }

private:
    bool take(std::size_t n) noexcept {
        if (_bad || _p.size() - _pos < n) {
            _bad = true;
            return false;
        }
        _pos += n;
        return true;
    }

    std::span<const std::byte> _p;
    std::size_t _pos = 0;
    bool _bad = false;
};

// Writer over an output span whose total size was checked up front by the caller.
class writer {
public:
    explicit writer(std::byte* p) noexcept : _p(p) {}

    void u8(uint8_t v) noexcept { _p[_pos++] = std::byte{v}; }
    void u16(uint16_t v) noexcept {
        u8(static_cast<uint8_t>(v >> 8));
        u8(static_cast<uint8_t>(v));
    }
    void u32(uint32_t v) noexcept {
        u16(static_cast<uint16_t>(v >> 16));
        u16(static_cast<uint16_t>(v));
    }
    void u64(uint64_t v) noexcept {
        u32(static_cast<uint32_t>(v >> 32));
        u32(static_cast<uint32_t>(v));
    }
    void str(std::string_view s) noexcept {
        std::size_t n = std::min(s.size(), k_max_str);
        u8(static_cast<uint8_t>(n));
        bytes({reinterpret_cast<const std::byte*>(s.data()), n});
    }
    void bytes(std::span<const std::byte> b) noexcept {
        if (!b.empty()) {
            std::memcpy(_p + _pos, b.data(), b.size());
            _pos += b.size();
        }
    }
    std::size_t size() const noexcept { return _pos; }

private:
    std::byte* _p;
    std::size_t _pos = 0;
};

std::size_t str_size(std::string_view s) noexcept {
    return 1 + std::min(s.size(), k_max_str);
}

void put_header(writer& w, frame_type t, uint32_t sid, uint32_t length) noexcept {
    w.u8(static_cast<uint8_t>(t));
    w.u8(0);  // flags: none defined (M3)
    w.u16(0); // reserved (M2)
    w.u32(sid);
    w.u32(length);
}

// True if out has room for the header plus `payload` bytes and the length fits the wire limit.
bool fits(std::span<std::byte> out, std::size_t payload) noexcept {
    return payload <= k_hard_max_frame && out.size() >= k_header_size + payload;
}

bool is_tunnel_frame(frame_type t) noexcept {
    switch (t) {
    case frame_type::hello:
    case frame_type::hello_ack:
    case frame_type::ping:
    case frame_type::pong:
    case frame_type::goaway:
    case frame_type::config:
        return true;
    default:
        return false;
    }
}

// Unknown reason codes on the wire map to internal (SPEC.md M14): a newer peer may add reasons
// and the only thing a receiver does with one is log it and close the stream or tunnel.
reason to_reason(uint16_t v) noexcept {
    if (v > static_cast<uint16_t>(reason::version_too_old)) {
        return reason::internal;
    }
    return static_cast<reason>(v);
}

std::size_t encode_reason_frame(std::span<std::byte> out, frame_type t, uint32_t sid,
                                const reason_frame& r) noexcept {
    std::size_t len = 2 + str_size(r.message);
    if (!fits(out, len)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, t, sid, static_cast<uint32_t>(len));
    w.u16(static_cast<uint16_t>(r.code));
    w.str(r.message);
    return w.size();
}

std::size_t encode_u64_frame(std::span<std::byte> out, frame_type t, uint64_t v) noexcept {
    if (!fits(out, 8)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, t, 0, 8);
    w.u64(v);
    return w.size();
}

std::size_t encode_empty_frame(std::span<std::byte> out, frame_type t, uint32_t sid) noexcept {
    if (!fits(out, 0)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, t, sid, 0);
    return w.size();
}

} // namespace

std::string_view to_string(frame_type t) noexcept {
    switch (t) {
    case frame_type::hello:
        return "HELLO";
    case frame_type::hello_ack:
        return "HELLO_ACK";
    case frame_type::open:
        return "OPEN";
    case frame_type::open_ack:
        return "OPEN_ACK";
    case frame_type::open_fail:
        return "OPEN_FAIL";
    case frame_type::data:
        return "DATA";
    case frame_type::window:
        return "WINDOW";
    case frame_type::fin:
        return "FIN";
    case frame_type::rst:
        return "RST";
    case frame_type::ping:
        return "PING";
    case frame_type::pong:
        return "PONG";
    case frame_type::goaway:
        return "GOAWAY";
    case frame_type::config:
        return "CONFIG";
    }
    return "UNKNOWN";
}

std::string_view to_string(reason r) noexcept {
    switch (r) {
    case reason::no_error:
        return "no_error";
    case reason::protocol_error:
        return "protocol_error";
    case reason::flow_control:
        return "flow_control";
    case reason::stream_limit:
        return "stream_limit";
    case reason::refused:
        return "refused";
    case reason::unreachable:
        return "unreachable";
    case reason::timed_out:
        return "timed_out";
    case reason::cancelled:
        return "cancelled";
    case reason::not_allowed:
        return "not_allowed";
    case reason::internal:
        return "internal";
    case reason::shutting_down:
        return "shutting_down";
    case reason::rate_limited:
        return "rate_limited";
    case reason::unknown_app:
        return "unknown_app";
    case reason::no_connector:
        return "no_connector";
    case reason::version_too_old:
        return "version_too_old";
    }
    return "unknown";
}

result<frame_header> decode_header(std::span<const std::byte> in, uint32_t max_frame) noexcept {
    if (in.size() < k_header_size) {
        return errc::again;
    }
    const std::byte* p = in.data();
    uint8_t type = std::to_integer<uint8_t>(p[0]);
    frame_header h;
    h.flags = std::to_integer<uint8_t>(p[1]);
    uint16_t reserved = load16(p + 2);
    h.stream_id = load32(p + 4);
    h.length = load32(p + 8);
    if (reserved != 0) {
        return error(errc::protocol_error, "reserved header field is not 0"); // M2
    }
    if (h.flags != 0) {
        return error(errc::protocol_error, "header flags set, none are defined"); // M3
    }
    if (type < static_cast<uint8_t>(frame_type::hello) ||
        type > static_cast<uint8_t>(frame_type::config)) {
        return error(errc::protocol_error, "unknown frame type"); // M4
    }
    h.type = static_cast<frame_type>(type);
    if (h.length > max_frame) {
        return error(errc::frame_too_large, "frame length exceeds max_frame"); // M5
    }
    bool tunnel = is_tunnel_frame(h.type);
    if (tunnel && h.stream_id != 0) {
        return error(errc::protocol_error, "tunnel frame with non-zero stream id"); // M6
    }
    if (!tunnel && h.stream_id == 0) {
        return error(errc::protocol_error, "stream frame with stream id 0"); // M7
    }
    // M8: fixed-size frames are rejected before their payload is waited for.
    switch (h.type) {
    case frame_type::open_ack:
    case frame_type::fin:
        if (h.length != 0) {
            return error(errc::protocol_error, "OPEN_ACK/FIN with a payload");
        }
        break;
    case frame_type::ping:
    case frame_type::pong:
        if (h.length != 8) {
            return error(errc::protocol_error, "PING/PONG payload is not 8 bytes");
        }
        break;
    case frame_type::window:
        if (h.length != 4) {
            return error(errc::protocol_error, "WINDOW payload is not 4 bytes");
        }
        break;
    default:
        break;
    }
    return h;
}

result<hello> decode_hello(std::span<const std::byte> p) noexcept {
    reader r(p);
    hello h;
    h.proto_version = r.u16();
    h.worker_index = r.u16();
    h.max_frame = r.u32();
    h.initial_window = r.u32();
    h.connector_id = r.str();
    h.connector_version = r.str();
    if (r.bad()) {
        return error(errc::protocol_error, "HELLO truncated"); // M9
    }
    if (!r.done()) {
        return error(errc::protocol_error, "HELLO has trailing bytes"); // M10
    }
    return h;
}

result<hello_ack> decode_hello_ack(std::span<const std::byte> p) noexcept {
    reader r(p);
    hello_ack h;
    h.proto_version = r.u16();
    h.worker_index = r.u16();
    h.worker_count = r.u16();
    uint16_t reserved = r.u16();
    h.max_frame = r.u32();
    h.initial_window = r.u32();
    h.max_streams = r.u32();
    h.ping_interval_ms = r.u32();
    h.latest_version = r.str();
    h.min_version = r.str();
    if (r.bad()) {
        return error(errc::protocol_error, "HELLO_ACK truncated"); // M9
    }
    if (!r.done()) {
        return error(errc::protocol_error, "HELLO_ACK has trailing bytes"); // M10
    }
    if (reserved != 0) {
        return error(errc::protocol_error, "HELLO_ACK reserved field is not 0"); // M11
    }
    return h;
}

result<open_frame> decode_open(std::span<const std::byte> p) noexcept {
    reader r(p);
    open_frame o;
    o.app = r.str();
    o.target = r.str();
    if (r.bad()) {
        return error(errc::protocol_error, "OPEN truncated"); // M9
    }
    if (!r.done()) {
        return error(errc::protocol_error, "OPEN has trailing bytes"); // M10
    }
    return o;
}

result<reason_frame> decode_reason(std::span<const std::byte> p) noexcept {
    reader r(p);
    reason_frame f;
    f.code = to_reason(r.u16());
    f.message = r.str();
    if (r.bad()) {
        return error(errc::protocol_error, "OPEN_FAIL/RST truncated"); // M9
    }
    if (!r.done()) {
        return error(errc::protocol_error, "OPEN_FAIL/RST has trailing bytes"); // M10
    }
    return f;
}

result<uint32_t> decode_window(std::span<const std::byte> p) noexcept {
    if (p.size() != 4) {
        return error(errc::protocol_error, "WINDOW payload is not 4 bytes"); // M8
    }
    uint32_t inc = load32(p.data());
    if (inc == 0) {
        return error(errc::protocol_error, "WINDOW increment is 0"); // M12
    }
    if (inc > k_max_window) {
        return error(errc::flow_control, "WINDOW increment exceeds 2^31-1"); // M13
    }
    return inc;
}

result<uint64_t> decode_ping(std::span<const std::byte> p) noexcept {
    if (p.size() != 8) {
        return error(errc::protocol_error, "PING/PONG payload is not 8 bytes"); // M8
    }
    return load64(p.data());
}

result<goaway_frame> decode_goaway(std::span<const std::byte> p) noexcept {
    reader r(p);
    goaway_frame g;
    g.last_stream_id = r.u32();
    g.code = to_reason(r.u16());
    g.message = r.str();
    if (r.bad()) {
        return error(errc::protocol_error, "GOAWAY truncated"); // M9
    }
    if (!r.done()) {
        return error(errc::protocol_error, "GOAWAY has trailing bytes"); // M10
    }
    return g;
}

result<config_frame> decode_config(std::span<const std::byte> p) noexcept {
    reader r(p);
    config_frame c;
    c.version = r.u64();
    if (r.bad()) {
        return error(errc::protocol_error, "CONFIG truncated"); // M9
    }
    c.body = r.rest();
    return c;
}

std::size_t encode_hello(std::span<std::byte> out, const hello& h) noexcept {
    std::size_t len = 12 + str_size(h.connector_id) + str_size(h.connector_version);
    if (!fits(out, len)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::hello, 0, static_cast<uint32_t>(len));
    w.u16(h.proto_version);
    w.u16(h.worker_index);
    w.u32(h.max_frame);
    w.u32(h.initial_window);
    w.str(h.connector_id);
    w.str(h.connector_version);
    return w.size();
}

std::size_t encode_hello_ack(std::span<std::byte> out, const hello_ack& h) noexcept {
    std::size_t len = 24 + str_size(h.latest_version) + str_size(h.min_version);
    if (!fits(out, len)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::hello_ack, 0, static_cast<uint32_t>(len));
    w.u16(h.proto_version);
    w.u16(h.worker_index);
    w.u16(h.worker_count);
    w.u16(0);
    w.u32(h.max_frame);
    w.u32(h.initial_window);
    w.u32(h.max_streams);
    w.u32(h.ping_interval_ms);
    w.str(h.latest_version);
    w.str(h.min_version);
    return w.size();
}

std::size_t encode_open(std::span<std::byte> out, uint32_t sid, const open_frame& o) noexcept {
    std::size_t len = str_size(o.app) + str_size(o.target);
    if (!fits(out, len)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::open, sid, static_cast<uint32_t>(len));
    w.str(o.app);
    w.str(o.target);
    return w.size();
}

std::size_t encode_open_ack(std::span<std::byte> out, uint32_t sid) noexcept {
    return encode_empty_frame(out, frame_type::open_ack, sid);
}

std::size_t encode_open_fail(std::span<std::byte> out, uint32_t sid,
                             const reason_frame& r) noexcept {
    return encode_reason_frame(out, frame_type::open_fail, sid, r);
}

std::size_t encode_rst(std::span<std::byte> out, uint32_t sid, const reason_frame& r) noexcept {
    return encode_reason_frame(out, frame_type::rst, sid, r);
}

std::size_t encode_window(std::span<std::byte> out, uint32_t sid, uint32_t increment) noexcept {
    if (!fits(out, 4)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::window, sid, 4);
    w.u32(increment);
    return w.size();
}

std::size_t encode_fin(std::span<std::byte> out, uint32_t sid) noexcept {
    return encode_empty_frame(out, frame_type::fin, sid);
}

std::size_t encode_ping(std::span<std::byte> out, uint64_t opaque) noexcept {
    return encode_u64_frame(out, frame_type::ping, opaque);
}

std::size_t encode_pong(std::span<std::byte> out, uint64_t opaque) noexcept {
    return encode_u64_frame(out, frame_type::pong, opaque);
}

std::size_t encode_goaway(std::span<std::byte> out, const goaway_frame& g) noexcept {
    std::size_t len = 6 + str_size(g.message);
    if (!fits(out, len)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::goaway, 0, static_cast<uint32_t>(len));
    w.u32(g.last_stream_id);
    w.u16(static_cast<uint16_t>(g.code));
    w.str(g.message);
    return w.size();
}

std::size_t encode_config(std::span<std::byte> out, uint64_t version,
                          std::span<const std::byte> body) noexcept {
    if (body.size() > k_hard_max_frame - 8) {
        return 0;
    }
    std::size_t len = 8 + body.size();
    if (!fits(out, len)) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::config, 0, static_cast<uint32_t>(len));
    w.u64(version);
    w.bytes(body);
    return w.size();
}

std::size_t encode_data_header(std::span<std::byte> out, uint32_t sid, uint32_t length) noexcept {
    if (out.size() < k_header_size || length > k_hard_max_frame) {
        return 0;
    }
    writer w(out.data());
    put_header(w, frame_type::data, sid, length);
    return w.size();
}

// frame_decoder state:
//   _have == 0  : no partial frame; next() parses straight out of _chunk (zero copy).
//   _have  > 0  : _buf holds the first _have bytes of a frame (header first, then payload);
//                 next() tops it up from _chunk and returns a view into _buf once complete.
//   _failed     : a header error was returned; every later next() returns the same error code.
// The buffer is reserved once (k_header_size + construction max_frame) and never grows; header
// validation (M5) runs before a single payload byte is copied.
frame_decoder::frame_decoder(uint32_t max_frame)
    : _max_frame(std::min(max_frame, k_hard_max_frame)),
      _buf(new std::byte[k_header_size + std::min(max_frame, k_hard_max_frame)]) {}

void frame_decoder::feed(std::span<const std::byte> chunk) noexcept {
    _chunk = chunk;
}

void frame_decoder::set_max_frame(uint32_t max_frame) noexcept {
    // The buffer was sized at construction: only shrinking is allowed.
    _max_frame = std::min(max_frame, _max_frame);
}

result<frame_decoder::frame> frame_decoder::next() noexcept {
    if (_failed) {
        // Sticky failure: the offending header was kept in _buf, so decoding it again yields
        // the same error (max_frame only ever shrinks) without storing the error separately.
        auto h = decode_header({_buf.get(), k_header_size}, _max_frame);
        if (h.ok()) {
            return error(errc::protocol_error, "frame decoder failed earlier");
        }
        return h.err();
    }
    if (_have == 0) {
        auto h = decode_header(_chunk, _max_frame);
        if (h.ok()) {
            std::size_t total = k_header_size + h->length;
            if (_chunk.size() >= total) {
                frame f{*h, _chunk.subspan(k_header_size, h->length)};
                _chunk = _chunk.subspan(total);
                return f;
            }
        } else if (h.code() != errc::again) {
            std::memcpy(_buf.get(), _chunk.data(), k_header_size);
            _failed = true;
            return h.err();
        }
        if (_chunk.empty()) {
            return errc::again;
        }
        // Partial frame. If the header is complete it was validated above, so copying at most
        // k_header_size + length bytes is within the buffer.
        std::memcpy(_buf.get(), _chunk.data(), _chunk.size());
        _have = _chunk.size();
        _chunk = {};
        return errc::again;
    }
    // Complete the header first.
    if (_have < k_header_size) {
        std::size_t n = std::min(k_header_size - _have, _chunk.size());
        std::memcpy(_buf.get() + _have, _chunk.data(), n);
        _have += n;
        _chunk = _chunk.subspan(n);
        if (_have < k_header_size) {
            return errc::again;
        }
    }
    auto h = decode_header({_buf.get(), k_header_size}, _max_frame);
    if (!h.ok()) {
        _failed = true;
        return h.err();
    }
    std::size_t total = k_header_size + h->length;
    std::size_t n = std::min(total - _have, _chunk.size());
    if (n > 0) {
        std::memcpy(_buf.get() + _have, _chunk.data(), n);
        _have += n;
        _chunk = _chunk.subspan(n);
    }
    if (_have < total) {
        return errc::again;
    }
    // The view into _buf stays valid until the next call to next() or feed().
    _have = 0;
    return frame{*h, {_buf.get() + k_header_size, h->length}};
}

} // namespace apprelay::tunnel
