// apprelayctl's command tree: the bash completion script and the man page generated from it,
// and the exit codes and --json errors of commands that need no relay.
#include "control/ctl/cli.hh"
#include "control/ctl/client.hh"
#include "control/ctl/docs.hh"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace apprelay::ctl {
namespace {

using nlohmann::json;

// Every command the README and the man page promise; the tree must hold exactly these leaves.
const std::set<std::string> k_leaves = {
    "status",          "metrics",         "relays list",       "relays drain",  "tenants list",
    "tenants ca",      "groups list",     "groups create",     "groups rename", "groups delete",
    "connectors list", "connectors move", "connectors delete", "apps list",     "apps create",
    "apps update",     "apps assign",     "apps delete",       "tokens create", "tokens list",
    "tokens revoke",   "users issue",     "completion",        "man",
};

struct run_result {
    int rc = -1;
    std::string out;
    std::string err;
};

run_result run_ctl(std::vector<std::string> args, const std::string& argv0 = "apprelayctl") {
    args.insert(args.begin(), argv0);
    std::vector<const char*> argv;
    for (const auto& a : args) {
        argv.push_back(a.c_str());
    }
    std::ostringstream out;
    std::ostringstream err;
    command_line cli;
    run_result r;
    r.rc = cli.run(static_cast<int>(argv.size()), argv.data(), out, err);
    r.out = out.str();
    r.err = err.str();
    return r;
}

class scratch_dir : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/ctl_cli_test.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir = tmpl;
    }
    void TearDown() override { std::system(("rm -rf '" + dir + "'").c_str()); }

    std::string write(const std::string& name, const std::string& text) {
        std::string path = dir + "/" + name;
        std::ofstream(path) << text;
        return path;
    }

    // Runs a shell command; returns its exit status and fills output with stdout+stderr.
    int shell(const std::string& cmd, std::string& output) {
        std::string file = dir + "/shell.out";
        int st = std::system((cmd + " >'" + file + "' 2>&1").c_str());
        std::ifstream in(file);
        std::ostringstream ss;
        ss << in.rdbuf();
        output = ss.str();
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }

    // What the completion script offers for a command line whose last word is being typed:
    // `words` as a bash array literal, as bash splits the line (at COMP_WORDBREAKS too), and
    // `line` the line itself (default: the words joined by blanks).
    std::string complete(const std::string& script, const std::string& words,
                         const std::string& line = "") {
        std::string driver =
            "source '" + script +
            "'\n"
            "COMP_WORDS=(" +
            words +
            ")\n"
            "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n" +
            (line.empty() ? "COMP_LINE=\"${COMP_WORDS[*]}\"\n"
                          : "IFS= read -r COMP_LINE < '" + write("line.txt", line) + "'\n") +
            "COMP_POINT=${#COMP_LINE}\n"
            "_apprelayctl\n"
            "echo \"${COMPREPLY[*]}\"\n";
        std::string out;
        EXPECT_EQ(shell("bash '" + write("driver.sh", driver) + "'", out), 0) << out;
        while (!out.empty() && out.back() == '\n') {
            out.pop_back();
        }
        return out;
    }

    // A stand-in for apprelayctl as the program being completed: records its arguments one a
    // line in `args` and runs `body`.
    std::string fake_ctl(const std::string& body) {
        std::string path = write("fake-ctl", "#!/bin/sh\nprintf '%s\\n' \"$@\" > '" + dir +
                                                 "/args'\n" + body + "\n");
        EXPECT_EQ(::chmod(path.c_str(), 0755), 0);
        return path;
    }

    // The arguments the stand-in got at its last run, one a line ("" if it did not run), and
    // forgets them.
    std::string fake_args() {
        std::ifstream in(dir + "/args");
        std::ostringstream ss;
        ss << in.rdbuf();
        std::remove((dir + "/args").c_str());
        return ss.str();
    }

    std::string dir;
};

TEST(ctl_cli, tree_holds_every_documented_command) {
    command_line cli;
    std::set<std::string> leaves;
    for (const auto& n : command_nodes(cli.app())) {
        if (n.app->get_subcommands([](const CLI::App*) { return true; }).empty()) {
            leaves.insert(n.path);
        }
    }
    EXPECT_EQ(leaves, k_leaves);
}

TEST_F(scratch_dir, completion_names_every_command_and_option_and_is_valid_bash) {
    command_line cli;
    std::string script = bash_completion(cli.app(), cli.names());
    for (const auto& n : command_nodes(cli.app())) {
        EXPECT_NE(script.find("\"" + n.path + "\")"), std::string::npos) << n.path;
        for (const CLI::Option* o :
             n.app->get_options([](const CLI::Option* o) { return o->nonpositional(); })) {
            for (const auto& l : o->get_lnames()) {
                EXPECT_NE(script.find(" --" + l), std::string::npos) << n.path << " --" << l;
            }
        }
    }
    std::string path = write("apprelayctl.bash", script);
    std::string out;
    EXPECT_EQ(shell("bash -n '" + path + "'", out), 0) << out;

    // It completes, walking past global options and their values.
    EXPECT_EQ(complete(path, "apprelayctl gr"), "groups");
    EXPECT_EQ(complete(path, "apprelayctl --tenant contoso groups c"), "create");
    EXPECT_EQ(complete(path, "apprelayctl --tenant groups gr"), "groups"); // "groups" is the value
    EXPECT_EQ(complete(path, "apprelayctl apps create wiki --access ''"), "passthrough user-cert");
    EXPECT_EQ(complete(path, "apprelayctl groups delete --f"), "--force");
    EXPECT_EQ(complete(path, "apprelayctl tokens create --j"), "--json"); // a global option
    EXPECT_EQ(complete(path, "apprelayctl --json gr"), "groups");         // a flag: no value
    EXPECT_EQ(complete(path, "apprelayctl groups delete --force --he"), "--help");
    EXPECT_EQ(complete(path, "apprelayctl completion ''"), "bash");
}

// Which values name objects on the relay, by command path and option or argument name.
TEST(ctl_cli, values_that_name_relay_objects) {
    command_line cli;
    std::map<std::string, std::string> got;
    for (const auto& n : command_nodes(cli.app())) {
        for (const CLI::Option* o : n.app->get_options()) {
            if (auto it = cli.names().find(o); it != cli.names().end()) {
                got[n.path + (n.path.empty() ? "" : " ") + o->get_name()] = it->second;
            }
        }
    }
    const std::map<std::string, std::string> want = {
        {"--tenant", "tenants"},
        {"relays drain NODE", "relays"},
        {"tenants ca NAME", "tenants"},
        {"groups rename OLD", "groups"},
        {"groups delete NAME", "groups"},
        {"connectors move ID", "connectors"},
        {"connectors move GROUP", "groups"},
        {"connectors delete ID", "connectors"},
        {"apps create --group", "groups"},
        {"apps update NAME", "apps"},
        {"apps update --group", "groups"},
        {"apps assign NAME", "apps"},
        {"apps assign GROUP", "groups"},
        {"apps delete NAME", "apps"},
        {"tokens create --group", "groups"},
        {"tokens revoke ID", "tokens"},
    };
    EXPECT_EQ(got, want); // not `users issue --group`: user groups are no relay object
    EXPECT_EQ(cli.names().size(), want.size());
    // Every kind is one the names command takes: a parse error would exit 2, not 3.
    for (const auto& [what, kind] : want) {
        EXPECT_EQ(
            run_ctl({"--socket", "/nonexistent/a.sock", std::string(k_names_command), kind}).rc,
            k_exit_unreachable)
            << what;
    }
}

TEST(ctl_cli, names_command_is_hidden_and_takes_known_kinds_only) {
    command_line cli;
    for (const auto& n : command_nodes(cli.app())) {
        EXPECT_EQ(n.path.find(k_names_command), std::string::npos) << n.path;
    }
    EXPECT_EQ(run_ctl({"--help"}).out.find(k_names_command), std::string::npos);
    EXPECT_EQ(man_page(cli.app(), "1").find(k_names_command), std::string::npos);
    EXPECT_NE(bash_completion(cli.app(), cli.names()).find(k_names_command), std::string::npos);
    EXPECT_EQ(run_ctl({std::string(k_names_command), "users"}).rc, k_exit_usage);
    EXPECT_EQ(run_ctl({std::string(k_names_command)}).rc, k_exit_usage);
    run_result r = run_ctl(
        {"--socket", "/nonexistent/a.sock", "--json", std::string(k_names_command), "apps"});
    EXPECT_EQ(r.rc, k_exit_unreachable);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(json::parse(r.err)["status"], 0);
}

TEST_F(scratch_dir, completion_asks_the_program_for_names_with_the_options_on_the_line) {
    command_line cli;
    std::string script = write("apprelayctl.bash", bash_completion(cli.app(), cli.names()));
    std::string ctl = fake_ctl("case \"$*\" in\n"
                               "*\"__names groups\") printf 'alpha\\nbeta\\n' ;;\n"
                               "*\"__names apps\") printf 'web\\nwiki\\n' ;;\n"
                               "*\"__names tenants\") printf 'contoso\\n' ;;\n"
                               "*\"__names connectors\") printf 'c0ffee\\n' ;;\n"
                               "*\"__names tokens\") printf '%s\\n' t1 '$(touch " +
                               dir +
                               "/ran)' ;;\n"
                               "esac");
    EXPECT_EQ(complete(script, ctl + " --socket /s/admin.sock groups delete ''"), "alpha beta");
    EXPECT_EQ(fake_args(), "--socket\n/s/admin.sock\n__names\ngroups\n");
    EXPECT_EQ(complete(script, ctl + " groups delete b"), "beta");
    EXPECT_EQ(fake_args(), "__names\ngroups\n");
    EXPECT_EQ(complete(script, ctl + " groups rename alpha ''"), ""); // NEW: a new name
    EXPECT_EQ(fake_args(), "");
    EXPECT_EQ(complete(script, ctl + " apps update ''"), "web wiki");
    EXPECT_EQ(complete(script, ctl + " apps update wiki --group ''"), "alpha beta");
    EXPECT_EQ(complete(script, ctl + " apps assign web ''"), "alpha beta"); // its 2nd argument
    EXPECT_EQ(complete(script, ctl + " apps create wi --group a"), "alpha");
    fake_args(); // forgets the last run's
    EXPECT_EQ(complete(script, ctl + " apps create ''"), "");
    EXPECT_EQ(fake_args(), "");
    EXPECT_EQ(complete(script, ctl + " connectors move ''"), "c0ffee");
    EXPECT_EQ(complete(script, ctl + " connectors move c0ffee ''"), "alpha beta");
    EXPECT_EQ(complete(script, ctl + " tokens revoke t"), "t1");
    EXPECT_EQ(complete(script, ctl + " tokens create --group ''"), "alpha beta");
    EXPECT_EQ(complete(script, ctl + " tenants ca ''"), "contoso");
    EXPECT_EQ(complete(script, ctl + " --tenant ''"), "contoso");
    // users issue --group is a user group: file names, never the relay's connector groups.
    fake_args(); // forgets the last run's
    complete(script, ctl + " users issue bob --group ''");
    EXPECT_EQ(fake_args(), "");
    EXPECT_EQ(complete(script, ctl + " groups delete zz"), "");
    // What the relay sends is offered as it is, never expanded (compgen -W would run it).
    EXPECT_EQ(complete(script, ctl + " tokens revoke '$'"), "$(touch " + dir + "/ran)");
    struct stat st {};
    EXPECT_NE(::stat((dir + "/ran").c_str(), &st), 0);

    // The connection options pass through as the shell will pass them: --url split by bash at
    // ":", --opt=value split at "=", quotes and ~/, before or after the command.
    EXPECT_EQ(complete(script,
                       ctl + " --url http : //127.0.0.1 : 9 --token \"'t k'\" --tenant = contoso"
                             " groups delete ''",
                       ctl + " --url http://127.0.0.1:9 --token 't k' --tenant=contoso groups "
                             "delete "),
              "alpha beta");
    EXPECT_EQ(fake_args(),
              "--url\nhttp://127.0.0.1:9\n--token\nt k\n--tenant\ncontoso\n__names\ngroups\n");
    EXPECT_EQ(complete(script, ctl + " apps delete --socket '~/a.sock' --json ''"), "web wiki");
    EXPECT_EQ(fake_args(),
              "--socket\n" + std::string(std::getenv("HOME")) + "/a.sock\n__names\napps\n");
    // Right after "--tenant=": bash's word is the "=".
    EXPECT_EQ(complete(script, ctl + " --tenant =", ctl + " --tenant="), "contoso");
    EXPECT_EQ(complete(script, ctl + " --tenant = co", ctl + " --tenant=co"), "contoso");
}

TEST_F(scratch_dir, completion_gives_up_on_a_relay_that_does_not_answer) {
    command_line cli;
    std::string script = write("apprelayctl.bash", bash_completion(cli.app(), cli.names()));
    // What apprelayctl does with the relay down: an error on stderr, exit 3.
    std::string down = fake_ctl("echo 'error: cannot reach the relay' >&2; exit 3");
    EXPECT_EQ(complete(script, down + " groups delete ''"), ""); // stdout and stderr: nothing
    // A relay that accepts and never answers: the script stops waiting after 2 s.
    std::string hung = fake_ctl("sleep 20; echo late");
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(complete(script, hung + " apps delete ''"), "");
    auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(took, std::chrono::milliseconds(3500));
    EXPECT_GE(took, std::chrono::milliseconds(1900));
}

TEST(ctl_cli, completion_command_prints_the_generated_script) {
    command_line cli;
    run_result r = run_ctl({"completion", "bash"});
    EXPECT_EQ(r.rc, k_exit_ok);
    EXPECT_EQ(r.out, bash_completion(cli.app(), cli.names()));
    run_result j = run_ctl({"--json", "completion", "bash"});
    EXPECT_EQ(j.rc, k_exit_ok);
    EXPECT_EQ(json::parse(j.out), (json{{"shell", "bash"}, {"script", r.out}}));
    EXPECT_EQ(run_ctl({"completion", "zsh"}).rc, k_exit_usage);
}

TEST_F(scratch_dir, man_page_documents_every_command_option_and_exit_code) {
    command_line cli;
    std::string page = man_page(cli.app(), "9.9.9");
    for (const char* section : {"NAME", "SYNOPSIS", "DESCRIPTION", "GLOBAL OPTIONS", "COMMANDS",
                                "EXIT STATUS", "FILES", "ENVIRONMENT", "EXAMPLES"}) {
        EXPECT_NE(page.find(std::string("\n.SH ") + section + "\n"), std::string::npos) << section;
    }
    EXPECT_EQ(page.find(".TH APPRELAYCTL 1 \"\" \"apprelay 9.9.9\""), page.find(".TH"));
    for (const auto& leaf : k_leaves) {
        EXPECT_NE(page.find(".SS \"" + leaf + "\""), std::string::npos) << leaf;
    }
    for (const auto& n : command_nodes(cli.app())) {
        for (const CLI::Option* o :
             n.app->get_options([](const CLI::Option* o) { return o->nonpositional(); })) {
            for (const auto& l : o->get_lnames()) {
                std::string roff_name = "\\-\\-";
                for (char c : l) {
                    roff_name += c == '-' ? std::string("\\-") : std::string(1, c);
                }
                EXPECT_NE(page.find("\\fB" + roff_name + "\\fR"), std::string::npos)
                    << n.path << " --" << l;
            }
        }
    }
    for (const auto& e : k_exit_code_docs) {
        EXPECT_NE(page.find(".B " + std::to_string(e.code) + "\n"), std::string::npos) << e.code;
    }
    // Run as a path (meson runs the built binary so), the page still names the program.
    std::string run_page = run_ctl({"man"}, "/build/control/ctl/apprelayctl").out;
    EXPECT_EQ(run_page, man_page(cli.app(), APPRELAY_VERSION));
    EXPECT_NE(run_page.find(".SH NAME\napprelayctl \\- manage an apprelay relay"),
              std::string::npos);

    std::string out;
    if (shell("command -v groff", out) != 0) {
        GTEST_SKIP() << "groff not installed: structure checked, not the roff";
    }
    std::string path = write("apprelayctl.1", page);
    // -ww: every warning; -z: no output. A clean page prints nothing at all.
    EXPECT_EQ(shell("groff -man -ww -z '" + path + "'", out), 0) << out;
    EXPECT_EQ(out, "");
    // And it renders the commands as text a reader finds.
    EXPECT_EQ(shell("groff -man -Tascii -P-cbou '" + path + "'", out), 0) << out;
    EXPECT_NE(out.find("--idle-timeout-ms"), std::string::npos);
    EXPECT_NE(out.find("apprelayctl groups create NAME [--region TEXT]"), std::string::npos) << out;
}

TEST(ctl_cli, usage_errors_exit_2_and_are_json_with_json) {
    run_result bad = run_ctl({"groups", "create", "eu", "--no-such-flag"});
    EXPECT_EQ(bad.rc, k_exit_usage);
    EXPECT_EQ(bad.out, "");
    EXPECT_NE(bad.err.find("--no-such-flag"), std::string::npos) << bad.err;

    run_result j = run_ctl({"--json", "groups", "create", "eu", "--no-such-flag"});
    EXPECT_EQ(j.rc, k_exit_usage);
    EXPECT_EQ(j.out, "");
    json e = json::parse(j.err);
    EXPECT_EQ(e["status"], 0);
    EXPECT_NE(e["error"].get<std::string>().find("--no-such-flag"), std::string::npos) << j.err;

    // Missing argument, a bad choice, --url without a token, an unreadable --cert: all 2.
    EXPECT_EQ(run_ctl({"groups", "create"}).rc, k_exit_usage);
    EXPECT_EQ(run_ctl({"apps", "update", "a", "--access", "open"}).rc, k_exit_usage);
    ::unsetenv("APPRELAY_ADMIN_TOKEN");
    run_result url = run_ctl({"--url", "http://127.0.0.1:9", "status", "--json"});
    EXPECT_EQ(url.rc, k_exit_usage);
    EXPECT_EQ(json::parse(url.err)["error"], "--url needs --token or APPRELAY_ADMIN_TOKEN");
    EXPECT_EQ(run_ctl({"--socket", "/nonexistent/a.sock", "apps", "create", "a", "--backend", "h:1",
                       "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem"})
                  .rc,
              k_exit_usage);
    EXPECT_EQ(run_ctl({"--help"}).rc, k_exit_ok);
}

TEST(ctl_cli, unreachable_relay_exits_3_and_is_json_with_json) {
    run_result r = run_ctl({"--socket", "/nonexistent/admin.sock", "--json", "tenants", "list"});
    EXPECT_EQ(r.rc, k_exit_unreachable);
    EXPECT_EQ(r.out, "");
    json e = json::parse(r.err);
    EXPECT_EQ(e["status"], 0);
    EXPECT_EQ(e["error"], "cannot reach the relay at /nonexistent/admin.sock: No such file or "
                          "directory");
    run_result t = run_ctl({"--socket", "/nonexistent/admin.sock", "status"});
    EXPECT_EQ(t.rc, k_exit_unreachable);
    EXPECT_EQ(t.err, "error: cannot reach the relay at /nonexistent/admin.sock: No such file or "
                     "directory\n");
}

TEST(ctl_cli, http_status_maps_to_exit_code) {
    EXPECT_EQ(exit_code_for_status(200), k_exit_ok);
    EXPECT_EQ(exit_code_for_status(202), k_exit_ok);
    EXPECT_EQ(exit_code_for_status(400), k_exit_refused);
    EXPECT_EQ(exit_code_for_status(404), k_exit_refused);
    EXPECT_EQ(exit_code_for_status(409), k_exit_refused);
    EXPECT_EQ(exit_code_for_status(422), k_exit_refused);
    EXPECT_EQ(exit_code_for_status(500), k_exit_server);
    EXPECT_EQ(exit_code_for_status(503), k_exit_server);
}

} // namespace
} // namespace apprelay::ctl
