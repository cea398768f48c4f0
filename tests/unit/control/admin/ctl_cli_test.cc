// apprelayctl's command tree: the bash completion script and the man page generated from it,
// and the exit codes and --json errors of commands that need no relay.
#include "control/ctl/cli.hh"
#include "control/ctl/client.hh"
#include "control/ctl/docs.hh"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
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

    // What the completion script offers for a command line whose last word is being typed.
    std::string complete(const std::string& script, const std::string& words) {
        std::string driver = "source '" + script +
                             "'\n"
                             "COMP_WORDS=(" +
                             words +
                             ")\n"
                             "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
                             "_apprelayctl\n"
                             "echo \"${COMPREPLY[*]}\"\n";
        std::string out;
        EXPECT_EQ(shell("bash '" + write("driver.sh", driver) + "'", out), 0) << out;
        while (!out.empty() && out.back() == '\n') {
            out.pop_back();
        }
        return out;
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
    std::string script = bash_completion(cli.app());
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

TEST(ctl_cli, completion_command_prints_the_generated_script) {
    command_line cli;
    run_result r = run_ctl({"completion", "bash"});
    EXPECT_EQ(r.rc, k_exit_ok);
    EXPECT_EQ(r.out, bash_completion(cli.app()));
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
