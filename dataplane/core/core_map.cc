#include "dataplane/core/core_map.hh"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <pthread.h>
#include <sched.h>

namespace apprelay::core {

namespace {

// Linux cpu numbers fit in a cpu_set_t; larger numbers are certainly typos.
constexpr int k_max_cpu = CPU_SETSIZE - 1;

error refuse(std::string* why, std::string message) {
    if (why != nullptr) {
        *why = std::move(message);
    }
    return error(errc::invalid_argument, "core map refused");
}

std::string quoted(std::string_view s) {
    return "'" + std::string(s) + "'";
}

bool parse_cpu(std::string_view text, int& out) {
    if (text.empty()) {
        return false;
    }
    int value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value < 0 || value > k_max_cpu) {
        return false;
    }
    out = value;
    return true;
}

} // namespace

std::string cpu_list_to_string(const std::vector<int>& cpus) {
    std::vector<int> sorted = cpus;
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    std::string out;
    for (std::size_t i = 0; i < sorted.size();) {
        std::size_t j = i;
        while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) {
            ++j;
        }
        if (!out.empty()) {
            out += ',';
        }
        out += std::to_string(sorted[i]);
        if (j > i) {
            out += '-';
            out += std::to_string(sorted[j]);
        }
        i = j + 1;
    }
    return out.empty() ? std::string("none") : out;
}

result<core_map> parse_core_map(std::string_view spec, const std::vector<int>& available_cpus,
                                std::string* why) {
    core_map map;
    bool have_control = false;
    bool have_workers = false;
    bool have_shared = false;
    bool in_workers = false; // a token without '=' continues the workers list

    auto add_worker_item = [&](std::string_view item) -> result<void> {
        std::size_t dash = item.find('-');
        int first = 0;
        int last = 0;
        if (dash == std::string_view::npos) {
            if (!parse_cpu(item, first)) {
                return refuse(why, "malformed cpu number " + quoted(item) + " in workers");
            }
            last = first;
        } else {
            if (!parse_cpu(item.substr(0, dash), first) ||
                !parse_cpu(item.substr(dash + 1), last)) {
                return refuse(why, "malformed cpu range " + quoted(item) + " in workers");
            }
            if (first > last) {
                return refuse(why, "malformed cpu range " + quoted(item) +
                                       " in workers: start is above end");
            }
        }
        for (int cpu = first; cpu <= last; ++cpu) {
            if (std::find(map.worker_cpus.begin(), map.worker_cpus.end(), cpu) !=
                map.worker_cpus.end()) {
                return refuse(why, "duplicate cpu " + std::to_string(cpu) + " in workers");
            }
            map.worker_cpus.push_back(cpu);
        }
        return ok_result();
    };

    std::size_t pos = 0;
    while (pos <= spec.size()) {
        std::size_t comma = spec.find(',', pos);
        if (comma == std::string_view::npos) {
            comma = spec.size();
        }
        std::string_view token = spec.substr(pos, comma - pos);
        pos = comma + 1;
        if (token.empty()) {
            if (spec.empty()) {
                break;
            }
            return refuse(why, "empty item in core map " + quoted(spec));
        }
        std::size_t eq = token.find('=');
        if (eq == std::string_view::npos) {
            if (!in_workers) {
                return refuse(why, "item " + quoted(token) + " has no key (expected key=value)");
            }
            if (auto r = add_worker_item(token); !r) {
                return r.err();
            }
            continue;
        }
        std::string_view key = token.substr(0, eq);
        std::string_view value = token.substr(eq + 1);
        in_workers = false;
        if (key == "control") {
            if (have_control) {
                return refuse(why, "duplicate key 'control'");
            }
            have_control = true;
            if (!parse_cpu(value, map.control_cpu)) {
                return refuse(why, "malformed cpu number " + quoted(value) + " for control");
            }
        } else if (key == "workers") {
            if (have_workers) {
                return refuse(why, "duplicate key 'workers'");
            }
            have_workers = true;
            in_workers = true;
            if (value.empty()) {
                return refuse(why, "no workers");
            }
            if (auto r = add_worker_item(value); !r) {
                return r.err();
            }
        } else if (key == "shared") {
            if (have_shared) {
                return refuse(why, "duplicate key 'shared'");
            }
            have_shared = true;
            if (value == "1") {
                map.shared = true;
            } else if (value == "0") {
                map.shared = false;
            } else {
                return refuse(why, "malformed value " + quoted(value) + " for shared (0 or 1)");
            }
        } else {
            return refuse(why,
                          "unknown key " + quoted(key) + " (expected control, workers, shared)");
        }
    }

    if (!have_control) {
        return refuse(why, "control cpu missing");
    }
    if (map.worker_cpus.empty()) {
        return refuse(why, "no workers");
    }
    auto check_available = [&](int cpu) -> result<void> {
        if (std::find(available_cpus.begin(), available_cpus.end(), cpu) == available_cpus.end()) {
            return refuse(why, "cpu " + std::to_string(cpu) + " is not available (available: " +
                                   cpu_list_to_string(available_cpus) + ")");
        }
        return ok_result();
    };
    if (auto r = check_available(map.control_cpu); !r) {
        return r.err();
    }
    for (int cpu : map.worker_cpus) {
        if (auto r = check_available(cpu); !r) {
            return r.err();
        }
    }
    if (!map.shared && std::find(map.worker_cpus.begin(), map.worker_cpus.end(), map.control_cpu) !=
                           map.worker_cpus.end()) {
        return refuse(why, "cpu " + std::to_string(map.control_cpu) +
                               " is both control and worker (add shared=1 to allow)");
    }
    std::sort(map.worker_cpus.begin(), map.worker_cpus.end());
    return map;
}

std::vector<int> available_cpus() {
    std::vector<int> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
        return cpus;
    }
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (CPU_ISSET(cpu, &set)) {
            cpus.push_back(cpu);
        }
    }
    return cpus;
}

result<void> pin_current_thread(int cpu, std::string* why) {
    if (cpu < 0 || cpu > k_max_cpu) {
        if (why != nullptr) {
            *why = "cpu " + std::to_string(cpu) + " is out of range (0-" +
                   std::to_string(k_max_cpu) + ")";
        }
        return error(errc::invalid_argument, "cpu out of range");
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (rc != 0) {
        if (why != nullptr) {
            *why = "cannot pin thread to cpu " + std::to_string(cpu) + ": " + std::strerror(rc);
        }
        return error(errc::io_error, "pthread_setaffinity_np failed");
    }
    return ok_result();
}

std::string to_string(const core_map& map) {
    std::string out = "control=" + std::to_string(map.control_cpu) +
                      ",workers=" + cpu_list_to_string(map.worker_cpus);
    if (map.shared) {
        out += ",shared=1";
    }
    return out;
}

} // namespace apprelay::core
