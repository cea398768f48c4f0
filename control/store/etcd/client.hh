#pragma once
// A small etcd v3 client over the gRPC stubs generated from Debian's etcd .proto files. Only what
// the store needs: ranges pinned to a revision, transactions of compares and puts/deletes,
// leases, and a prefix watch. No gRPC type crosses this header.
//
// Every call has a deadline (client_options::timeout_ms); a failure to reach a member with quorum
// within it is store_error::kind::unavailable, which the admin API maps to 503. One client is safe
// to use from several threads (gRPC channels and stubs are), but a watcher belongs to one thread.
#include "control/store/store.hh"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace apprelay::control::etcd {

struct client_options {
    std::vector<std::string> endpoints; // "host:port"
    // TLS to etcd: all empty = plaintext (loopback tests); ca alone = server-authenticated TLS;
    // cert + key add a client certificate.
    std::string ca_file;
    std::string cert_file;
    std::string key_file;
    int timeout_ms = 2000;
};

struct kv {
    std::string key;
    std::string value;
    int64_t create_revision = 0;
    int64_t mod_revision = 0;
    int64_t lease = 0;
};

struct range_result {
    int64_t revision = 0; // the store revision the read saw
    std::vector<kv> kvs;
};

// One compare of a transaction: the key's mod_revision equals `revision` (0 = the key is absent,
// compared as create_revision == 0).
struct compare {
    std::string key;
    int64_t mod_revision = 0;
};

struct op {
    enum class kind : uint8_t { put, del };
    kind k = kind::put;
    std::string key;
    std::string value;
    int64_t lease = 0;
};

struct txn_result {
    bool succeeded = false;
    int64_t revision = 0;
};

struct watch_event {
    bool deleted = false;
    kv item; // for a delete: key and mod_revision only
};

struct watch_batch {
    std::vector<watch_event> events;
    int64_t revision = 0;          // the header revision of this response
    int64_t compact_revision = 0;  // > 0: the start revision was compacted; re-read
    bool canceled = false;         // the server ended the watch (no leader, compaction...)
};

class watcher {
public:
    virtual ~watcher() = default;
    // Sends the watch request and waits for etcd to confirm it (no deadline: cancel() ends it).
    virtual store_result<void> open() = 0;
    // Blocks for the next response. An error ends the watch (open a new one).
    virtual store_result<watch_batch> next() = 0;
    // From another thread: makes a blocked next() return an error.
    virtual void cancel() = 0;
};

class client {
public:
    virtual ~client() = default;
    static store_result<std::unique_ptr<client>> make(const client_options& o);

    // Every key under `prefix`, at `revision` (0 = the newest, linearizable), in pages.
    virtual store_result<range_result> range_prefix(const std::string& prefix,
                                                    int64_t revision = 0) = 0;
    virtual store_result<range_result> get(const std::string& key) = 0;
    // All compares hold -> apply `ops` atomically; else nothing (succeeded = false).
    virtual store_result<txn_result> txn(const std::vector<compare>& cmp,
                                         const std::vector<op>& ops) = 0;
    virtual store_result<int64_t> lease_grant(int64_t ttl_s) = 0;
    // Returns the remaining TTL; 0 or less = the lease is gone.
    virtual store_result<int64_t> lease_keepalive(int64_t id) = 0;
    virtual store_result<void> lease_revoke(int64_t id) = 0;
    virtual store_result<void> compact(int64_t revision) = 0;
    // A watch of `prefix` from `start_revision`, with progress notifications, on a member that
    // has a leader (a member cut off from quorum cancels the watch instead of going silent).
    // Not open yet: register it where cancel() can reach it, then open() it.
    virtual std::unique_ptr<watcher> watch_prefix(const std::string& prefix,
                                                  int64_t start_revision) = 0;
};

// The end of a prefix range: the prefix with its last byte incremented ("" -> "\0" = all keys).
std::string prefix_end(const std::string& prefix);

} // namespace apprelay::control::etcd
