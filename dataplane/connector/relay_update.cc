#include "dataplane/connector/relay_update.hh"

#include "dataplane/base/log.hh"
#include "dataplane/base/version.hh"
#include "dataplane/connector/package.hh"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <limits>
#include <type_traits>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

namespace apprelay::connector {

namespace {

using clock = std::chrono::steady_clock;
constexpr uint32_t k_request_deadline_ms = 10'000;
// A package larger than this is refused before it is downloaded.
constexpr uint64_t k_max_package_bytes = 512ull * 1024 * 1024;

void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

// Refusals that asking again cannot change.
bool final_refusal(const std::string& reason) {
    return reason == "unknown connector certificate" ||
           reason.rfind("connector certificate required", 0) == 0 ||
           reason.rfind("unknown op", 0) == 0 || reason == "malformed request" ||
           reason.rfind("this relay serves no update package", 0) == 0 ||
           reason.rfind("no such package file", 0) == 0;
}

std::string explain(const std::string& reason) {
    // A relay from before connector requests reads the line as an enrollment without a token.
    return reason == "malformed request"
               ? "the relay does not answer connector requests (a relay older than update turns?)"
               : reason;
}

// A field of a relay reply, or `fallback` when it is missing or of another type. (json::value()
// would throw on a field of the wrong type: a reply is untrusted input.)
template <typename T> T field(const nlohmann::json& doc, const char* key, T fallback) {
    if (!doc.is_object()) {
        return fallback;
    }
    auto it = doc.find(key);
    if (it == doc.end()) {
        return fallback;
    }
    if constexpr (std::is_same_v<T, bool>) {
        return it->is_boolean() ? it->get<bool>() : fallback;
    } else if constexpr (std::is_same_v<T, std::string>) {
        return it->is_string() ? it->get<std::string>() : fallback;
    } else {
        return it->is_number_unsigned() && it->get<uint64_t>() <= std::numeric_limits<T>::max()
                   ? T(it->get<uint64_t>())
                   : fallback;
    }
}

} // namespace

result<uint32_t> wait_for_turn(const state& st, const std::string& version, uint32_t timeout_s,
                               std::string* why) {
    const auto until = clock::now() + std::chrono::seconds(timeout_s);
    const std::string line =
        nlohmann::json({{"op", "update_turn"}, {"version", version}}).dump() + "\n";
    log::info("turn_requested", {{"relay", st.enroll}, {"version", version}});
    std::string last;
    for (;;) {
        std::string err;
        uint32_t delay_ms = 1000;
        auto reply = connector_request(st, line, k_request_deadline_ms, nullptr, &err);
        if (reply.ok()) {
            auto doc = nlohmann::json::parse(*reply, nullptr, false);
            if (field(doc, "granted", false)) {
                const uint32_t lease = field(doc, "lease_s", 0u);
                log::info("turn_granted", {{"group", field(doc, "group", std::string())}, {"lease_s", lease}});
                return lease;
            }
            err = doc.is_object() ? field(doc, "reason", std::string("refused without a reason"))
                                  : std::string("invalid reply");
            delay_ms = doc.is_object() ? std::clamp(field(doc, "retry_after_ms", 1000u), 100u,
                                                    30'000u)
                                       : 1000;
        } else if (reply.code() == errc::refused && final_refusal(err)) {
            set_why(why, "the relay refused the update turn: " + explain(err));
            return error(errc::refused, "turn refused");
        }
        if (err != last) {
            log::info("turn_wait", {{"reason", err}, {"retry_after_ms", delay_ms}});
            last = err;
        }
        auto now = clock::now();
        if (now + std::chrono::milliseconds(delay_ms) > until) {
            set_why(why, "no update turn within " + std::to_string(timeout_s) + " s (last: " +
                             err + ")");
            return error(errc::timed_out, "no turn");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    }
}

result<std::string> fetch_relay_package(const state& st, const std::string& out_dir,
                                        const std::string& running_version, bool* up_to_date,
                                        std::string* why) {
    *up_to_date = false;
    std::string err;
    auto info = connector_request(st, "{\"op\":\"update_info\"}\n", k_request_deadline_ms, nullptr,
                                  &err);
    if (!info.ok()) {
        set_why(why, "cannot ask " + st.enroll + " for its update package: " + explain(err));
        return info.err();
    }
    auto doc = nlohmann::json::parse(*info, nullptr, false);
    if (!field(doc, "package", false)) {
        std::string problem = field(doc, "package_problem", std::string());
        set_why(why, "the relay serves no update package" +
                         (problem.empty() ? std::string(" (its latest_version is ") +
                                                (doc.is_object()
                                                     ? field(doc, "latest_version", std::string("?"))
                                                     : "?") +
                                                ")"
                                          : ": " + problem));
        return error(errc::refused, "no package");
    }
    const std::string version = field(doc, "version", std::string());
    if (!running_version.empty() && compare_versions(version, running_version) <= 0) {
        *up_to_date = true;
        return version;
    }
    if (::mkdir(out_dir.c_str(), 0700) != 0 && errno != EEXIST) {
        set_why(why, "cannot create " + out_dir + ": " + std::strerror(errno));
        return error(errc::io_error, "cannot create download dir");
    }
    uint64_t total = 0;
    for (std::string_view name : {k_manifest_file, k_signature_file, k_binary_file}) {
        const std::string file(name);
        const std::string path = out_dir + "/" + file;
        ::unlink(path.c_str()); // never append to what an earlier attempt left
        int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            set_why(why, "cannot write " + path + ": " + std::strerror(errno));
            return error(errc::io_error, "cannot write package file");
        }
        uint64_t offset = 0;
        uint64_t size = 0;
        bool done = false;
        while (!done) {
            std::string body;
            const std::string line = nlohmann::json({{"op", "update_fetch"},
                                                     {"file", file},
                                                     {"offset", offset}})
                                         .dump() +
                                     "\n";
            auto r = connector_request(st, line, k_request_deadline_ms, &body, &err);
            if (!r.ok()) {
                ::close(fd);
                set_why(why, std::string("cannot fetch ") + file + " from " + st.enroll + ": " +
                                 explain(err));
                return r.err();
            }
            auto d = nlohmann::json::parse(*r, nullptr, false);
            if (!d.is_object() || !d.contains("size") || !d["size"].is_number_unsigned() ||
                field(d, "offset", ~uint64_t(0)) != offset) {
                ::close(fd);
                set_why(why, std::string("invalid fetch reply for ") + file);
                return error(errc::protocol_error, "invalid fetch reply");
            }
            size = d["size"].get<uint64_t>();
            if (size > k_max_package_bytes || total + size > k_max_package_bytes) {
                ::close(fd);
                set_why(why, std::string(file) + " is " + std::to_string(size) +
                                 " bytes: larger than an update package may be");
                return error(errc::refused, "package too large");
            }
            if (body.empty() && offset < size) {
                ::close(fd);
                set_why(why, std::string("the relay sent no bytes of ") + file + " at offset " +
                                 std::to_string(offset));
                return error(errc::protocol_error, "empty chunk");
            }
            for (std::size_t w = 0; w < body.size();) {
                ssize_t n = ::write(fd, body.data() + w, body.size() - w);
                if (n < 0 && errno == EINTR) {
                    continue;
                }
                if (n <= 0) {
                    ::close(fd);
                    set_why(why, "cannot write " + path + ": " + std::strerror(errno));
                    return error(errc::io_error, "cannot write package file");
                }
                w += std::size_t(n);
            }
            offset += body.size();
            done = offset >= size;
        }
        total += size;
        if (::close(fd) != 0) {
            set_why(why, "cannot write " + path + ": " + std::strerror(errno));
            return error(errc::io_error, "cannot write package file");
        }
    }
    log::info("package_fetched",
              {{"relay", st.enroll}, {"version", version}, {"bytes", total}, {"dir", out_dir}});
    return version;
}

} // namespace apprelay::connector
