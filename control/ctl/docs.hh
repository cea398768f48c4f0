#pragma once
// Documentation generated from apprelayctl's command tree (cli.hh): the bash completion script
// and the man page. Both walk the same CLI::App that parses the command line.
#include <CLI/CLI.hpp>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace apprelay::ctl {

// The hidden command the completion script runs to learn what exists on the relay:
// `apprelayctl [--socket S|--url U --token T] [--tenant T] __names KIND` prints the names of
// KIND (tenants, groups, apps, ...), one a line. Left out of --help, the man page and the
// completed commands: it is the script's interface, not the user's.
inline constexpr std::string_view k_names_command = "__names";

// Values that name an object on the relay (the app to update, the group to move a connector
// to): the option or positional, and the KIND of `__names KIND` that lists them.
using value_names = std::map<const CLI::Option*, std::string>;

// One command of the tree: its words after the program name ("groups create"; empty for the
// top level) and its CLI11 node.
struct command_node {
    std::string path;
    const CLI::App* app;
};
// Every node, parents before children, in definition order; hidden commands (no help group,
// k_names_command) left out.
std::vector<command_node> command_nodes(const CLI::App& root);

// The values an option or positional accepts when it is checked against a fixed set
// (CLI::IsMember), in order; empty otherwise.
std::vector<std::string> option_choices(const CLI::Option& opt);

// A bash completion script (`complete -F _apprelayctl apprelayctl`): subcommands, every
// command's options (its own and, as the tree falls through, its parents'), fixed choices and
// file names for option values, and for the values in `names` the names that exist on the
// relay, asked with k_names_command and the connection options already on the line (at most
// 2 s, silent when the relay does not answer).
std::string bash_completion(const CLI::App& root, const value_names& names);

// apprelayctl(1) in man(7) roff: NAME, SYNOPSIS, DESCRIPTION, GLOBAL OPTIONS, COMMANDS (each
// with its arguments and options), EXIT STATUS, FILES, ENVIRONMENT, EXAMPLES, SEE ALSO.
std::string man_page(const CLI::App& root, std::string_view version);

} // namespace apprelay::ctl
