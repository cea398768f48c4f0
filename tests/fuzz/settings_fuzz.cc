// libFuzzer target: the relay's settings file (control/settings.*), TOML text through toml++ (built
// header-only into this target, so the TOML parser itself is instrumented) and every section's
// checks. The file is operator input, but a typo or a hostile template must still end in a
// message, never a crash or an exception. Whatever the bytes, parse_settings either refuses with
// a reason or yields settings that satisfy the cross-key rules the relay relies on.
#include "control/settings.hh"

#include <cstdlib>
#include <string_view>

namespace {

// The settings file is a few KiB; bigger inputs only slow the fuzzer down.
constexpr size_t k_max_input = 64 * 1024;

bool valid_host_port(const std::string& s) {
    auto c = s.rfind(':');
    return c != std::string::npos && c > 0 && c + 1 < s.size() &&
           s.find_first_not_of("0123456789", c + 1) == std::string::npos;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace apprelay::control;
    if (size > k_max_input) {
        return 0;
    }
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    relay_settings s;
    std::string why;
    // The path is never opened: it only names the file and anchors relative paths.
    if (!parse_settings(text, "/fuzz/relay.toml", &s, &why)) {
        if (why.empty()) {
            std::abort(); // a refusal always says why
        }
        return 0;
    }
    const auto& lim = s.limits;
    if (lim.ping_timeout_ms <= lim.ping_interval_ms || lim.initial_window < lim.max_frame ||
        lim.max_frame < 1024 || lim.max_frame > (1u << 20)) {
        std::abort();
    }
    if ((s.io != "uring" && s.io != "dpdk") ||
        (s.store.kind != "sqlite" && s.store.kind != "etcd")) {
        std::abort();
    }
    if (!valid_host_port(s.user_listen) || !valid_host_port(s.tunnel_listen) ||
        !valid_host_port(s.enroll_listen) || s.server_name.empty() || s.server_name.size() > 253) {
        std::abort();
    }
    if (s.store.prefix.empty() || s.store.prefix.back() != '/' ||
        (s.store.kind == "etcd" && s.store.endpoints.empty())) {
        std::abort();
    }
    if (!s.admin_listen.empty() && s.admin_token.size() < 16) {
        std::abort(); // a TCP admin listener never runs without a bearer token
    }
    if (s.admin_socket.empty() || (!s.state_dir.empty() && s.state_dir.front() != '/')) {
        std::abort(); // relative paths resolve against the file's folder
    }
    if (s.io == "dpdk" && (s.dpdk.prefix_len < 1 || s.dpdk.prefix_len > 32)) {
        std::abort();
    }
    if (s.user_session_tickets != (s.user_ticket_keys != nullptr)) {
        std::abort();
    }
    return 0;
}
