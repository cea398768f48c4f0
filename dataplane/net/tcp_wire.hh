#pragma once
// TCP header and options on the wire (RFC 9293 3.1, 3.2; RFC 7323; RFC 2018). Parsing never
// reads past the data offset: an option whose kind, length or body runs past the header, a
// length below 2, or a known option with the wrong length makes the whole segment malformed.
#include <cstddef>
#include <cstdint>
#include <span>

namespace apprelay::net {

inline constexpr std::size_t k_tcp_header = 20;
inline constexpr std::size_t k_tcp_max_header = 60;

namespace tcp_flag {
inline constexpr uint8_t fin = 0x01;
inline constexpr uint8_t syn = 0x02;
inline constexpr uint8_t rst = 0x04;
inline constexpr uint8_t psh = 0x08;
inline constexpr uint8_t ack = 0x10;
inline constexpr uint8_t urg = 0x20;
} // namespace tcp_flag

inline constexpr uint8_t k_wscale_none = 0xff;
inline constexpr uint8_t k_wscale_max = 14; // RFC 7323 2.3

struct tcp_options {
    uint16_t mss = 0;               // 0: absent
    uint8_t wscale = k_wscale_none; // shift, clamped to 14 (RFC 7323 2.3)
    bool sack_permitted = false;
    bool has_timestamps = false;
    uint32_t ts_val = 0;
    uint32_t ts_ecr = 0;
};

struct tcp_segment {
    uint16_t src_port = 0;
    uint16_t dst_port = 0;
    uint32_t seq = 0;
    uint32_t ack = 0;
    uint8_t flags = 0;
    uint16_t window = 0; // unscaled
    tcp_options opt;
    std::span<const std::byte> payload;
};

enum class tcp_status : uint8_t { ok, bad_header, bad_checksum, bad_options };

// seg is the IPv4 payload; src/dst feed the pseudo-header checksum.
tcp_status parse_tcp(std::span<const std::byte> seg, uint32_t src, uint32_t dst,
                     tcp_segment& out) noexcept;

tcp_status parse_tcp_options(std::span<const std::byte> opts, tcp_options& out) noexcept;

// Options we put on SYN and SYN-ACK: MSS, then (if set) window scale and SACK-permitted, padded
// with NOPs to a multiple of 4. Returns the length written (at most 12).
std::size_t write_syn_options(std::byte* out, uint16_t mss, uint8_t wscale,
                              bool sack_permitted) noexcept;

// NOP, NOP, Timestamps (RFC 7323 3.2, appendix A layout): 12 bytes.
inline constexpr std::size_t k_ts_option_len = 12;
std::size_t write_ts_option(std::byte* out, uint32_t ts_val, uint32_t ts_ecr) noexcept;

// Header without checksum (filled by the caller once the payload is in place).
void write_tcp_header(std::byte* out, uint16_t src_port, uint16_t dst_port, uint32_t seq,
                      uint32_t ack, uint8_t flags, uint16_t window,
                      std::size_t options_len) noexcept;

// Fills the checksum of the segment at seg (header + options + payload) in place.
void finish_tcp_checksum(std::span<std::byte> seg, uint32_t src, uint32_t dst) noexcept;

} // namespace apprelay::net
