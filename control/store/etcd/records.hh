#pragma once
// The etcd store's key layout and records. Everything lives under one prefix P:
//
//   P config_version                      decimal; every admin write bumps it
//   P relay/ca                            {cert,key}: the fleet's relay CA
//   P relay/server/<server name>          {cert,key}: the server certificate for that name
//   P tenants/<tenant>                    {ca_cert,ca_key,ca_fp,created_at}
//   P groups/<tenant>/<group>             {id,region}: id is stable across renames
//   P connectors/<id>                     {name,group_id,version,fp,cert,first_seen}
//   P apps/<tenant>/<app>                 {group_id,hostname,port,backend_host,...}
//   P tokens/<id>                         {group_id,secret_sha256,created_at,expires_at,revoked}
//   P tokens_used/<id>                    the same plus used_at: the token, once redeemed
//   P revoked/<fingerprint>               {at}
//   P seen/<connector id>                 {last_seen,version}: liveness, not configuration
//   P presence/relays/<node>              {address,region,draining,started}: under its lease
//   P presence/tunnels/<connector>/<node> {since,version}: under that relay's lease
//   P jobs/purge                          {last_run,node}: the fleet-wide purge's fence
//   P drain/<node>                        {at}: an admin asked that relay to drain
//
// Records come from etcd and are untrusted like any input: every key and value is checked
// before it enters a model; a bad one is skipped, counted and named in `warnings`.
#include "control/store/etcd/client.hh"
#include "control/store/model.hh"
#include "tls/ca.hh"

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace apprelay::control::etcd {

// A record larger than this is refused (a PEM pair is a few KiB).
inline constexpr std::size_t k_max_record = 64 * 1024;

struct keys {
    explicit keys(std::string p) : prefix(std::move(p)) {}
    std::string prefix;
    std::string version() const { return prefix + "config_version"; }
    std::string relay_ca() const { return prefix + "relay/ca"; }
    std::string server(const std::string& name) const { return prefix + "relay/server/" + name; }
    std::string tenant(const std::string& t) const { return prefix + "tenants/" + t; }
    std::string group(const std::string& t, const std::string& g) const {
        return prefix + "groups/" + t + "/" + g;
    }
    std::string connector(const std::string& id) const { return prefix + "connectors/" + id; }
    std::string app(const std::string& t, const std::string& a) const {
        return prefix + "apps/" + t + "/" + a;
    }
    std::string token(const std::string& id) const { return prefix + "tokens/" + id; }
    std::string token_used(const std::string& id) const { return prefix + "tokens_used/" + id; }
    std::string revoked(const std::string& fp) const { return prefix + "revoked/" + fp; }
    std::string seen(const std::string& id) const { return prefix + "seen/" + id; }
    std::string relay_presence(const std::string& node) const {
        return prefix + "presence/relays/" + node;
    }
    std::string tunnel_presence(const std::string& connector, const std::string& node) const {
        return prefix + "presence/tunnels/" + connector + "/" + node;
    }
    std::string purge_job() const { return prefix + "jobs/purge"; }
    std::string drain(const std::string& node) const { return prefix + "drain/" + node; }
};

struct group_rec {
    std::string tenant;
    std::string name;
    std::string region;
    int64_t id = 0;
};

struct connector_rec {
    connector c; // c.tenant and c.group are resolved from group_id when read
    int64_t group_id = 0;
};

struct app_rec {
    app a; // a.group is resolved from group_id when read
    int64_t group_id = 0;
};

struct token_rec {
    std::string id;
    int64_t group_id = 0;
    std::string secret_sha256; // 64 lowercase hex
    int64_t created_at = 0;
    int64_t expires_at = 0;
    int64_t used_at = 0; // > 0: from tokens_used/
    bool revoked = false;
};

struct seen_rec {
    int64_t last_seen = 0;
    std::string version;
};

// A relay's presence record (under its lease).
struct relay_rec {
    std::string node;
    std::string address; // where peers and connectors reach it, host:port
    std::string region;
    bool draining = false;
    int64_t started = 0;
    uint64_t config_version = 0; // of its copy
    bool stale = false;
    int64_t lease = 0;
};

struct tunnel_rec {
    std::string node;
    int64_t since = 0;
    std::string version;
};

struct job_rec {
    int64_t last_run = 0;
    std::string node;
};

// The prefix read at one revision, decoded.
struct model {
    int64_t revision = 0;
    uint64_t config_version = 0;
    std::optional<tls::pem_pair> relay_ca;
    std::map<std::string, tls::pem_pair> server_certs;
    std::map<std::string, tenant> tenants;
    std::map<std::pair<std::string, std::string>, group_rec> groups;
    std::map<std::string, connector_rec> connectors;
    std::map<std::pair<std::string, std::string>, app_rec> apps;
    std::map<std::string, token_rec> tokens;
    std::map<std::string, int64_t> revoked;
    std::map<std::string, seen_rec> seen;
    std::map<std::string, std::vector<tunnel_rec>> presence; // connector id -> relays holding it
    std::map<std::string, relay_rec> relays;
    std::optional<job_rec> purge_job;
    std::map<std::string, int64_t> drain_requests; // node -> requested at
    // Every key under the prefix (also skipped ones) -> its mod revision, for compares.
    std::map<std::string, int64_t> mods;
    std::vector<std::string> warnings;
    uint64_t skipped = 0;

    const group_rec* group_by_id(int64_t id) const;
    const group_rec* find_group(const std::string& tenant, const std::string& name) const;
};

// Decodes one key/value into `m`. False (and *why) when the key or the value is malformed; `m`
// is then unchanged apart from nothing.
bool decode_record(const keys& k, const kv& item, model& m, std::string* why);
// A whole model from a prefix read; bad records are skipped, counted and named in warnings.
model build_model(const keys& k, const range_result& r);
// The relay view (store_view) of a model, as the SQLite store gives it: connector status and
// last_seen from presence and seen records, objects whose certificates do not parse skipped.
store_view to_view(const model& m, const std::string& server_name);

// A connector record as the API and the relay see it: tenant and group resolved, status active
// while any relay holds a tunnel for it, last_seen and version from its liveness records.
connector resolve(const model& m, const connector_rec& r, const group_rec& g);

std::string encode(const tls::pem_pair& p);
std::string encode(const tenant& t);
std::string encode(const group_rec& g);
std::string encode(const connector_rec& c);
std::string encode(const app_rec& a);
std::string encode(const token_rec& t);
std::string encode(const seen_rec& s);
std::string encode(const relay_rec& r);
std::string encode(const tunnel_rec& t);
std::string encode(const job_rec& j);
std::string encode_revoked(int64_t at);
std::string encode_drain(int64_t at);

std::string to_hex(std::string_view bytes);

} // namespace apprelay::control::etcd
