// libFuzzer target: records read from etcd (control/store/etcd/records.*), which the relay treats
// as untrusted input. The input is key\0value\0key\0value... under the prefix "/f/". Whatever
// the bytes, every record is either skipped (counted) or decoded, and a decoded record encodes
// and decodes to itself; the relay view of the whole model builds without failing.
#include "control/store/etcd/records.hh"

#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace apprelay::control;
using namespace apprelay::control::etcd;

// Re-encodes what `key` decoded into and decodes it again: must succeed and agree.
void roundtrip(const keys& k, const model& m, const kv& item) {
    model again;
    std::string why;
    auto check = [&](const std::string& value) {
        kv x = item;
        x.value = value;
        if (!decode_record(k, x, again, &why)) {
            std::abort();
        }
    };
    const std::string rel = item.key.substr(k.prefix.size());
    if (rel.rfind("groups/", 0) == 0 && !m.groups.empty()) {
        check(encode(m.groups.begin()->second));
    } else if (rel.rfind("connectors/", 0) == 0 && !m.connectors.empty()) {
        check(encode(m.connectors.begin()->second));
        if (again.connectors.begin()->second.c.cert_pem != m.connectors.begin()->second.c.cert_pem) {
            std::abort();
        }
    } else if (rel.rfind("apps/", 0) == 0 && !m.apps.empty()) {
        check(encode(m.apps.begin()->second));
        if (again.apps.begin()->second.a.allowed_user_groups !=
            m.apps.begin()->second.a.allowed_user_groups) {
            std::abort();
        }
    } else if (rel.rfind("tenants/", 0) == 0 && !m.tenants.empty()) {
        check(encode(m.tenants.begin()->second));
    } else if (rel.rfind("tokens/", 0) == 0 && !m.tokens.empty()) {
        check(encode(m.tokens.begin()->second));
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const keys k("/f/");
    std::vector<std::string> parts;
    std::string cur;
    for (size_t i = 0; i < size; ++i) {
        if (data[i] == 0) {
            parts.push_back(std::move(cur));
            cur.clear();
        } else {
            cur.push_back(static_cast<char>(data[i]));
        }
    }
    parts.push_back(std::move(cur));
    range_result r;
    r.revision = 7;
    for (size_t i = 0; i + 1 < parts.size(); i += 2) {
        kv item;
        item.key = k.prefix + parts[i];
        item.value = parts[i + 1];
        item.mod_revision = static_cast<int64_t>(i + 1);
        item.create_revision = 1;
        r.kvs.push_back(item);
        model one;
        std::string why;
        if (decode_record(k, item, one, &why)) {
            roundtrip(k, one, item);
        } else if (why.empty()) {
            std::abort(); // a refusal always says why
        }
    }
    model m = build_model(k, r);
    if (m.mods.size() > r.kvs.size() || m.skipped > r.kvs.size()) {
        std::abort();
    }
    store_view v = to_view(m, "relay.test");
    if (v.connectors.size() > m.connectors.size() || v.apps.size() > m.apps.size()) {
        std::abort();
    }
    return 0;
}
