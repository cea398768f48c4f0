#include "dataplane/io/dpdk/eal.hh"

#include "dataplane/base/log.hh"

#include <algorithm>
#include <charconv>
#include <mutex>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <string_view>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

namespace apprelay::io::dpdk {
namespace {

enum class eal_state { never, running, cleaned };

// Start-up state only (never touched on the data path): rte_eal_init is process-wide and
// one-shot, so its bookkeeping is too.
std::mutex g_eal_mutex;
eal_state g_state = eal_state::never;
// EAL keeps pointers into argv for some options, so the strings live until exit.
std::vector<std::string>* g_argv_storage = nullptr;

bool is_lcores_mapping(std::string_view l) {
    return l.find('@') != std::string_view::npos || l.find('(') != std::string_view::npos;
}

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& a : v) {
        if (!out.empty()) {
            out += ' ';
        }
        out += a;
    }
    return out;
}

bool parse_int(std::string_view s, int& out) {
    if (s.empty()) {
        return false;
    }
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size() && out >= 0;
}

// "0-2,4" -> {0,1,2,4}; appends to out.
bool parse_cpu_list(std::string_view list, std::vector<int>& out) {
    while (!list.empty()) {
        const auto comma = list.find(',');
        const std::string_view tok = list.substr(0, comma);
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
        const auto dash = tok.find('-');
        int lo = 0;
        int hi = 0;
        if (dash == std::string_view::npos) {
            if (!parse_int(tok, lo)) {
                return false;
            }
            hi = lo;
        } else if (!parse_int(tok.substr(0, dash), lo) || !parse_int(tok.substr(dash + 1), hi) ||
                   hi < lo) {
            return false;
        }
        for (int c = lo; c <= hi; ++c) {
            out.push_back(c);
        }
    }
    return true;
}

// --lcores grammar (DPDK eal_parse_lcores): elements separated by ',' outside parentheses,
// each `lcores[@cpus]` where either side is a number, a range or a parenthesised list. Without
// '@' the lcores run on the cpus of the same numbers.
bool parse_lcores_mapping(std::string_view spec, std::vector<int>& cpus) {
    std::size_t i = 0;
    auto read_set = [&](std::vector<int>& out) {
        if (i < spec.size() && spec[i] == '(') {
            const auto close = spec.find(')', i);
            if (close == std::string_view::npos) {
                return false;
            }
            const bool ok = parse_cpu_list(spec.substr(i + 1, close - i - 1), out);
            i = close + 1;
            return ok;
        }
        std::size_t end = i;
        while (end < spec.size() && spec[end] != ',' && spec[end] != '@') {
            ++end;
        }
        const bool ok = parse_cpu_list(spec.substr(i, end - i), out);
        i = end;
        return ok;
    };
    while (i < spec.size()) {
        std::vector<int> lcores;
        if (!read_set(lcores)) {
            return false;
        }
        if (i < spec.size() && spec[i] == '@') {
            ++i;
            if (!read_set(cpus)) {
                return false;
            }
        } else {
            cpus.insert(cpus.end(), lcores.begin(), lcores.end());
        }
        if (i < spec.size()) {
            if (spec[i] != ',') {
                return false;
            }
            ++i;
        }
    }
    return true;
}

// First cpu named by the spec, in spec order: EAL's main lcore is the lowest lcore id, which
// for -l is the lowest cpu and for --lcores the cpu of the lowest lcore; we approximate the
// latter by the first element, which is how operators write it.
result<int> main_cpu(const eal_settings& s, std::string* why) {
    auto cpus = eal_cpus(s, why);
    if (!cpus) {
        return cpus.err();
    }
    if (cpus->empty()) {
        return error(errc::not_found, "no EAL lcores given");
    }
    if (!is_lcores_mapping(s.lcores)) {
        return cpus->front(); // sorted: the lowest
    }
    std::vector<int> first;
    const auto comma = s.lcores.find(',');
    std::string_view head = std::string_view(s.lcores).substr(0, comma);
    if (head.find('(') != std::string_view::npos || !parse_lcores_mapping(head, first) ||
        first.empty()) {
        return cpus->front();
    }
    return first.front();
}

errc map_rte_errno(int e) {
    switch (e) {
    case ENOMEM:
    case ENODEV: // memory or bus set-up failed for lack of hugepages
        return errc::no_memory;
    case EACCES:
    case EPERM:
        return errc::not_allowed;
    case EINVAL:
        return errc::invalid_argument;
    case EALREADY:
        return errc::not_allowed;
    default:
        return errc::io_error;
    }
}

} // namespace

std::vector<std::string> build_eal_argv(const eal_settings& s) {
    std::vector<std::string> argv{s.program_name.empty() ? "apprelay" : s.program_name};
    if (!s.lcores.empty()) {
        argv.push_back(is_lcores_mapping(s.lcores) ? "--lcores" : "-l");
        argv.push_back(s.lcores);
    }
    for (const auto& a : s.allow) {
        argv.push_back("-a");
        argv.push_back(a);
    }
    for (const auto& v : s.vdevs) {
        argv.push_back("--vdev");
        argv.push_back(v);
    }
    if (!s.file_prefix.empty()) {
        argv.push_back("--file-prefix");
        argv.push_back(s.file_prefix);
    }
    if (s.no_huge) {
        argv.push_back("--no-huge");
    }
    if (s.memory_mb != 0) {
        argv.push_back("-m");
        argv.push_back(std::to_string(s.memory_mb));
    }
    if (s.no_pci) {
        argv.push_back("--no-pci");
    }
    for (const auto& l : s.log_levels) {
        argv.push_back("--log-level=" + l);
    }
    argv.insert(argv.end(), s.extra.begin(), s.extra.end());
    return argv;
}

result<std::vector<int>> eal_cpus(const eal_settings& s, std::string* why) {
    std::vector<int> cpus;
    const bool mapping = is_lcores_mapping(s.lcores);
    const bool ok = mapping ? parse_lcores_mapping(s.lcores, cpus) : parse_cpu_list(s.lcores, cpus);
    if (!ok) {
        if (why != nullptr) {
            *why =
                "malformed EAL " + std::string(mapping ? "--lcores" : "-l") + " '" + s.lcores + "'";
        }
        return error(errc::invalid_argument, "malformed EAL lcores");
    }
    std::sort(cpus.begin(), cpus.end());
    cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
    return cpus;
}

result<void> check_against_core_map(const eal_settings& s, const core::core_map& map,
                                    std::string* why) {
    if (s.lcores.empty()) {
        return ok_result();
    }
    auto cpus = eal_cpus(s, why);
    if (!cpus) {
        return cpus.err();
    }
    const char* flag = is_lcores_mapping(s.lcores) ? "--lcores" : "-l";
    for (int w : map.worker_cpus) {
        if (!std::binary_search(cpus->begin(), cpus->end(), w)) {
            if (why != nullptr) {
                *why =
                    "worker cpu " + std::to_string(w) + " is not in EAL " + flag + " " + s.lcores;
            }
            return error(errc::invalid_argument, "worker cpu not in EAL lcores");
        }
    }
    auto main = main_cpu(s, why);
    if (!main) {
        return main.err();
    }
    if (*main != map.control_cpu) {
        const bool on_worker = std::find(map.worker_cpus.begin(), map.worker_cpus.end(), *main) !=
                               map.worker_cpus.end();
        if (why != nullptr) {
            *why = "EAL main lcore runs on cpu " + std::to_string(*main) + " (first of " + flag +
                   " " + s.lcores + ") but the control cpu is " + std::to_string(map.control_cpu) +
                   (on_worker ? ", and cpu " + std::to_string(*main) + " is a worker cpu" : "") +
                   ": rte_eal_init pins the control thread to the main lcore";
        }
        return error(errc::invalid_argument, "EAL main lcore is not the control cpu");
    }
    return ok_result();
}

result<void> init_eal(const eal_settings& s, std::string* why) {
    std::lock_guard lock(g_eal_mutex);
    if (g_state != eal_state::never) {
        if (why != nullptr) {
            *why = "EAL was already initialised in this process (DPDK initialises once)";
        }
        return error(errc::not_allowed, "EAL already initialised");
    }
    if (s.no_huge && s.memory_mb == 0) {
        // EAL's own default with --no-huge is 64 MiB, too small for one port's mbuf pool;
        // refuse rather than fail later at pool creation with a vaguer message.
        if (why != nullptr) {
            *why = "EAL --no-huge needs an explicit memory size (-m, e.g. 256)";
        }
        return error(errc::invalid_argument, "--no-huge without -m");
    }
    auto* storage = new std::vector<std::string>(build_eal_argv(s));
#ifdef __SANITIZE_ADDRESS__
    // EAL keeps pointers into its argv for the life of the process, so this storage is never
    // freed on purpose; LeakSanitizer does not see the global that holds it once EAL has run.
    __lsan_ignore_object(storage);
#endif
    std::vector<char*> argv;
    argv.reserve(storage->size() + 1);
    for (auto& a : *storage) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    // rte_eal_init permutes argv (getopt); the char* array is ours to lose.
    const int rc = rte_eal_init(int(storage->size()), argv.data());
    if (rc < 0) {
        const int e = rte_errno;
        const std::string args = join(*storage);
        // EAL may keep pointers to the arguments even after a failure; keep them alive too.
        g_argv_storage = storage;
        // A failed rte_eal_init cannot be retried either (it sets its run-once flag first).
        g_state = eal_state::cleaned;
        if (why != nullptr) {
            *why = "rte_eal_init failed: " + std::string(rte_strerror(e)) + " (errno " +
                   std::to_string(e) + "); argv: " + args;
        }
        log::error("dpdk_eal_init_failed", {{"reason", rte_strerror(e)}, {"argv", args}});
        return error(map_rte_errno(e), "rte_eal_init failed");
    }
    g_argv_storage = storage;
    g_state = eal_state::running;
    log::info("dpdk_eal_up", {{"argv", join(*storage)}, {"lcores", rte_lcore_count()}});
    return ok_result();
}

bool eal_running() noexcept {
    std::lock_guard lock(g_eal_mutex);
    return g_state == eal_state::running;
}

void cleanup_eal() noexcept {
    std::lock_guard lock(g_eal_mutex);
    if (g_state != eal_state::running) {
        return;
    }
    const std::string runtime_dir = rte_eal_get_runtime_dir();
    rte_eal_cleanup();
    // EAL leaves its runtime directory (/var/run/dpdk/<file-prefix>) behind; with unique
    // prefixes (tests) they pile up. rmdir only removes it when empty (--no-shconf), so a
    // directory still holding shared config for another process is left alone.
    ::rmdir(runtime_dir.c_str());
    g_state = eal_state::cleaned;
}

result<void> register_worker_thread(std::string* why) {
    if (!eal_running()) {
        if (why != nullptr) {
            *why = "cannot register a worker thread with DPDK: EAL is not running";
        }
        return error(errc::not_allowed, "EAL not running");
    }
    if (rte_lcore_id() != LCORE_ID_ANY) {
        return ok_result(); // an EAL thread (main lcore) or already registered
    }
    if (rte_thread_register() != 0) {
        const int e = rte_errno;
        if (why != nullptr) {
            *why = "rte_thread_register failed: " + std::string(rte_strerror(e)) +
                   " (lcore table full, or multi-process in use)";
        }
        return error(e == ENOMEM ? errc::no_memory : errc::io_error, "rte_thread_register failed");
    }
    return ok_result();
}

void unregister_worker_thread() noexcept {
    // rte_thread_unregister ignores EAL threads itself, so it is safe on the main lcore too.
    if (rte_lcore_id() != LCORE_ID_ANY) {
        rte_thread_unregister();
    }
}

} // namespace apprelay::io::dpdk
