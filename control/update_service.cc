#include "control/update_service.hh"

#include "control/settings.hh"
#include "control/store/store.hh"
#include "dataplane/base/version.hh"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/stat.h>

namespace apprelay::control {

namespace {

constexpr std::size_t k_max_manifest = 64 * 1024;

void set_why(std::string* why, std::string msg) {
    if (why != nullptr) {
        *why = std::move(msg);
    }
}

enroll::service_reply refused(std::string why) {
    enroll::service_reply r;
    r.error = std::move(why);
    return r;
}

// Size of a regular file; -1 when it is missing or not a regular file.
int64_t file_size(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return -1;
    }
    return st.st_size;
}

} // namespace

result<package_summary> inspect_update_package(const std::string& dir, std::string* why) {
    const std::string m = dir + "/manifest.json";
    const int64_t msize = file_size(m);
    if (msize < 0 || msize > int64_t(k_max_manifest)) {
        set_why(why, "connectors.update_package: " +
                         (msize < 0 ? "no manifest.json in " + dir
                                    : m + " is larger than 64 KiB"));
        return error(errc::invalid_argument, "bad update package");
    }
    std::ifstream f(m, std::ios::binary);
    std::ostringstream text;
    text << f.rdbuf();
    auto doc = nlohmann::json::parse(text.str(), nullptr, false);
    package_summary p;
    auto str = [&](const char* k, std::string* dst) {
        auto it = doc.find(k);
        if (it == doc.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
            return false;
        }
        *dst = it->get<std::string>();
        return true;
    };
    if (doc.is_discarded() || !doc.is_object() || !str("version", &p.version) ||
        !str("arch", &p.arch) || !str("sha256", &p.sha256) || !doc.contains("size") ||
        !doc["size"].is_number_unsigned()) {
        set_why(why, "connectors.update_package: " + m +
                         " is not a package manifest (version, arch, sha256, size)");
        return error(errc::invalid_argument, "bad update package");
    }
    p.size = doc["size"].get<uint64_t>();
    if (file_size(dir + "/manifest.sig") != 64) {
        set_why(why, "connectors.update_package: " + dir +
                         "/manifest.sig is missing or not a 64-byte Ed25519 signature");
        return error(errc::invalid_argument, "bad update package");
    }
    const int64_t bsize = file_size(dir + "/apprelay-connector");
    if (bsize < 0 || uint64_t(bsize) != p.size) {
        set_why(why, "connectors.update_package: " + dir + "/apprelay-connector " +
                         (bsize < 0 ? std::string("is missing")
                                    : "is " + std::to_string(bsize) + " bytes, the manifest says " +
                                          std::to_string(p.size)));
        return error(errc::invalid_argument, "bad update package");
    }
    return p;
}

bool resolve_update_package(relay_settings* s, std::string* why) {
    if (s->update_package.empty()) {
        return true;
    }
    auto p = inspect_update_package(s->update_package, why);
    if (!p) {
        return false;
    }
    if (s->latest_version_set && s->latest_connector_version != p->version) {
        set_why(why, "connectors.latest_version " + s->latest_connector_version +
                         " differs from the version of connectors.update_package (" + p->version +
                         ")");
        return false;
    }
    if (apprelay::compare_versions(p->version, s->min_connector_version) < 0) {
        set_why(why, "connectors.update_package: version " + p->version +
                         " is older than connectors.min_version " + s->min_connector_version);
        return false;
    }
    s->latest_connector_version = p->version;
    return true;
}

enroll::service_reply connector_service::handle(const enroll::service_request& req, int64_t now) {
    if (req.op != "update_info" && req.op != "update_fetch" && req.op != "update_turn") {
        return refused("unknown op " + req.op);
    }
    // Who asks: a certificate that verified against a tenant CA, of a connector in the store,
    // issued by that connector's own tenant CA (as on the tunnel listener).
    if (req.peer_fingerprint.empty()) {
        return refused("connector certificate required (" +
                       (req.cert_problem.empty() ? std::string("none") : req.cert_problem) + ")");
    }
    // A download is many update_fetch requests: they (and update_info) share one read of the
    // store per second. A turn is decided on a fresh read (group members' status).
    if (req.op == "update_turn" || !_view || now != _view_at) {
        auto v = _store.load();
        if (!v) {
            return refused("store unavailable: " + v.err().message);
        }
        _view = std::make_unique<store_view>(std::move(v.value()));
        _view_at = now;
    }
    const store_view* view = _view.get();
    const connector* me = nullptr;
    for (const auto& c : view->connectors) {
        if (c.fingerprint == req.peer_fingerprint) {
            me = &c;
            break;
        }
    }
    const tenant* t = nullptr;
    if (me != nullptr) {
        for (const auto& x : view->tenants) {
            if (x.name == me->tenant) {
                t = &x;
            }
        }
    }
    if (me == nullptr || t == nullptr || t->ca_fingerprint != req.peer_root_fingerprint) {
        return refused("unknown connector certificate");
    }
    if (req.op == "update_info") {
        return info();
    }
    if (req.op == "update_fetch") {
        return fetch(req);
    }
    if (req.version.empty()) {
        return refused("update_turn needs the version being installed");
    }
    std::vector<turn_peer> others;
    for (const auto& c : view->connectors) {
        if (c.tenant == me->tenant && c.group == me->group && c.id != me->id) {
            others.push_back({c.id, c.name, c.status == connector_status::active});
        }
    }
    auto d = _turns.request(me->tenant + "/" + me->group, me->id, req.version, others, now);
    enroll::service_reply r;
    r.ok = true;
    r.fields = {{"granted", d.granted}, {"connector", me->id}, {"group", me->group}};
    if (d.granted) {
        r.fields["lease_s"] = d.lease_s;
    } else {
        r.fields["reason"] = d.reason;
        r.fields["retry_after_ms"] = d.retry_after_ms;
        if (!d.holder.empty()) {
            r.fields["holder"] = d.holder;
        }
    }
    return r;
}

enroll::service_reply connector_service::info() {
    enroll::service_reply r;
    r.ok = true;
    r.fields = {{"latest_version", _settings.latest_connector_version},
                {"min_version", _settings.min_connector_version},
                {"package", false}};
    if (!_settings.update_package.empty()) {
        std::string why;
        auto p = inspect_update_package(_settings.update_package, &why);
        if (!p) {
            // Changed under the relay since start: say so rather than serve a broken package.
            r.fields["package_problem"] = why;
            return r;
        }
        r.fields["package"] = true;
        r.fields["version"] = p->version;
        r.fields["arch"] = p->arch;
        r.fields["size"] = p->size;
        r.fields["sha256"] = p->sha256;
    }
    return r;
}

enroll::service_reply connector_service::fetch(const enroll::service_request& req) {
    if (_settings.update_package.empty()) {
        return refused("this relay serves no update package");
    }
    const auto* end = std::end(k_package_files);
    if (std::find_if(std::begin(k_package_files), end,
                     [&](const char* f) { return req.file == f; }) == end) {
        return refused("no such package file: " + req.file);
    }
    const std::string path = _settings.update_package + "/" + req.file;
    const int64_t size = file_size(path);
    if (size < 0) {
        return refused("package file " + req.file + " is missing on the relay");
    }
    if (req.offset > uint64_t(size)) {
        return refused("offset " + std::to_string(req.offset) + " is past the end of " + req.file +
                       " (" + std::to_string(size) + " bytes)");
    }
    const std::size_t n =
        std::min<uint64_t>(enroll::k_max_fetch_chunk, uint64_t(size) - req.offset);
    enroll::service_reply r;
    r.body.resize(n);
    std::ifstream f(path, std::ios::binary);
    f.seekg(std::streamoff(req.offset));
    f.read(r.body.data(), std::streamsize(n));
    if (!f || std::size_t(f.gcount()) != n) {
        return refused("cannot read " + req.file + " on the relay");
    }
    r.ok = true;
    r.fields = {{"file", req.file}, {"size", size}, {"offset", req.offset}};
    return r;
}

} // namespace apprelay::control
