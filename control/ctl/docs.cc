#include "control/ctl/docs.hh"

#include "control/ctl/client.hh"

#include <fmt/format.h>

namespace apprelay::ctl {

namespace {

void collect(const CLI::App& app, const std::string& path, std::vector<command_node>& out) {
    out.push_back({path, &app});
    // CLI11 hides a subcommand from --help when its group is empty; so do the docs.
    for (const CLI::App* sub :
         app.get_subcommands([](const CLI::App* a) { return !a->get_group().empty(); })) {
        collect(*sub, path.empty() ? sub->get_name() : path + " " + sub->get_name(), out);
    }
}

bool is_leaf(const CLI::App& app) {
    return app.get_subcommands([](const CLI::App*) { return true; }).empty();
}

// Named options (not positionals), the help flag included.
std::vector<const CLI::Option*> named_options(const CLI::App& app) {
    return app.get_options([](const CLI::Option* o) { return o->nonpositional(); });
}

std::vector<const CLI::Option*> positionals(const CLI::App& app) {
    return app.get_options([](const CLI::Option* o) { return !o->nonpositional(); });
}

// Flags expect no value at all (CLI11 sets expected(0) on them).
bool takes_value(const CLI::Option& o) {
    return o.get_items_expected_max() > 0;
}

std::vector<std::string> spellings(const CLI::Option& o) {
    std::vector<std::string> out;
    for (const auto& s : o.get_snames()) {
        out.push_back("-" + s);
    }
    for (const auto& l : o.get_lnames()) {
        out.push_back("--" + l);
    }
    return out;
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
    std::string out;
    for (const auto& s : v) {
        if (!out.empty()) {
            out += sep;
        }
        out += s;
    }
    return out;
}

// A node's options: its own and, since the tree falls through, its ancestors' (but their help
// flags: each node has its own).
std::vector<const CLI::Option*> accepted_options(const CLI::App& app) {
    std::vector<const CLI::Option*> out = named_options(app);
    for (const CLI::App* a = app.get_parent(); a != nullptr; a = a->get_parent()) {
        for (const CLI::Option* o : named_options(*a)) {
            if (o != a->get_help_ptr()) {
                out.push_back(o);
            }
        }
    }
    return out;
}

// What a value completes to in the script: "@KIND" for the names of KIND on the relay, else its
// fixed choices separated by blanks; empty when neither.
std::string value_spec(const CLI::Option& o, const value_names& names) {
    if (auto it = names.find(&o); it != names.end()) {
        return "@" + it->second;
    }
    return join(option_choices(o), " ");
}

// A bash case pattern for "PATH|TAIL" at the node `path` and every node below it: the tree
// falls through, so an option defined on a node is accepted by its subcommands too.
std::string subtree_pattern(const std::string& path, const std::string& tail) {
    if (path.empty()) {
        return fmt::format("*\"|{}\"", tail);
    }
    return fmt::format("\"{0}|{1}\"|\"{0} \"*\"|{1}\"", path, tail);
}

// --- roff ---------------------------------------------------------------------------------

// Text for a roff line: backslashes escaped, a leading control character neutralised.
std::string roff(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '\\') {
            out += "\\e";
        } else {
            out += c;
        }
    }
    if (!out.empty() && (out.front() == '.' || out.front() == '\'')) {
        out.insert(0, "\\&");
    }
    return out;
}

// An option name in roff: its hyphens are minus signs, so it can be copied and searched for.
std::string roff_flag(std::string_view s) {
    std::string out;
    for (char c : s) {
        if (c == '-') {
            out += "\\-";
        } else {
            out += c;
        }
    }
    return out;
}

// What an option's value is called: its choices ("passthrough|user-cert") or its type ("TEXT").
std::string metavar(const CLI::Option& o) {
    auto choices = option_choices(o);
    if (!choices.empty()) {
        return join(choices, "|");
    }
    std::string t = o.get_type_name();
    return t.substr(0, t.find(':'));
}

// "\fB\-\-region\fR \fITEXT\fR"
std::string roff_option(const CLI::Option& o) {
    std::vector<std::string> names;
    for (const auto& n : spellings(o)) {
        names.push_back("\\fB" + roff_flag(n) + "\\fR");
    }
    std::string s = join(names, ", ");
    if (takes_value(o)) {
        s += " \\fI" + roff(metavar(o)) + "\\fR";
    }
    return s;
}

std::string roff_option_list(const CLI::App& app) {
    std::string out;
    for (const CLI::Option* o : named_options(app)) {
        out += ".TP\n" + roff_option(*o) + "\n" + roff(o->get_description());
        if (o->get_required()) {
            out += " (required)";
        }
        out += "\n";
    }
    return out;
}

} // namespace

std::vector<command_node> command_nodes(const CLI::App& root) {
    std::vector<command_node> out;
    collect(root, "", out);
    return out;
}

std::vector<std::string> option_choices(const CLI::Option& opt) {
    // CLI::IsMember describes itself as "{a,b}" in the option's type name ("TEXT:{a,b}").
    std::string t = opt.get_type_name();
    auto open = t.find('{');
    auto close = t.find('}', open);
    std::vector<std::string> out;
    if (open == std::string::npos || close == std::string::npos) {
        return out;
    }
    std::string set = t.substr(open + 1, close - open - 1);
    std::size_t start = 0;
    while (start <= set.size()) {
        auto comma = set.find(',', start);
        std::string item =
            set.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!item.empty()) {
            out.push_back(item);
        }
        if (comma == std::string::npos) {
            break;
        }
        start = comma + 1;
    }
    return out;
}

std::string bash_completion(const CLI::App& root, const value_names& names) {
    const std::vector<command_node> all = command_nodes(root);
    std::string nodes;
    for (const auto& [path, app] : all) {
        std::vector<std::string> subs;
        for (const auto& n : all) {
            if (n.app->get_parent() == app) {
                subs.push_back(n.app->get_name());
            }
        }
        std::vector<std::string> opts;
        std::vector<std::string> valued;
        for (const CLI::Option* o : accepted_options(*app)) {
            for (const auto& n : spellings(*o)) {
                opts.push_back(n);
                if (takes_value(*o)) {
                    valued.push_back(n);
                }
            }
        }
        nodes += fmt::format("    \"{}\")\n"
                             "        subs=\"{}\"\n"
                             "        opts=\"{}\"\n"
                             "        valued=\"{}\"\n"
                             "        ;;\n",
                             path, join(subs, " "), join(opts, " "), join(valued, " "));
    }
    // Option values, each under the node that defines the option: children first, so that a
    // parent's pattern, which covers its subtree, never shadows an option of the same name
    // that a child defines.
    std::string values;
    for (auto n = all.rbegin(); n != all.rend(); ++n) {
        for (const CLI::Option* o : named_options(*n->app)) {
            std::string spec = takes_value(*o) ? value_spec(*o, names) : "";
            if (spec.empty()) {
                continue;
            }
            for (const auto& s : spellings(*o)) {
                values +=
                    fmt::format("    {}) echo \"{}\" ;;\n", subtree_pattern(n->path, s), spec);
            }
        }
    }
    std::string args;
    for (const auto& [path, app] : all) {
        std::vector<const CLI::Option*> pos = positionals(*app);
        for (std::size_t i = 0; i < pos.size(); ++i) {
            if (std::string spec = value_spec(*pos[i], names); !spec.empty()) {
                args += fmt::format("    \"{}|{}\") echo \"{}\" ;;\n", path, i, spec);
            }
        }
    }
    // The connection options (--socket, --url, --token, --tenant): the top level's options
    // that take a value. Passed on to the names command as the user typed them.
    std::vector<std::string> global;
    for (const CLI::Option* o : named_options(root)) {
        if (takes_value(*o)) {
            for (const auto& s : spellings(*o)) {
                global.push_back(s);
            }
        }
    }
    return fmt::format(R"bash(# bash completion for apprelayctl.
# Generated by `apprelayctl completion bash` from the command tree that parses its arguments;
# regenerate it rather than editing it.

# $1: the command path so far ("" = top level, "groups create"). Sets subs (its subcommands),
# opts (every option it accepts: its own and its parents') and valued (those that take a value).
_apprelayctl_node() {{
    subs="" opts="" valued=""
    case "$1" in
{0}    esac
}}

# $1: command path, $2: option. Prints what the option's value completes to: fixed words, or
# @KIND for the names of KIND on the relay; nothing for file names.
_apprelayctl_values() {{
    case "$1|$2" in
{1}    esac
}}

# $1: command path, $2: which of its arguments (0 = the first). Prints fixed words or @KIND.
_apprelayctl_args() {{
    case "$1|$2" in
{2}    esac
}}

# A word as typed, as the shell will pass it in the common cases: enclosing quotes removed, else
# a leading ~/ expanded. Not eval: that would run whatever the line holds at every TAB.
_apprelayctl_dequote() {{
    local w="$1"
    if [[ ${{#w}} -ge 2 && ($w == \'*\' || $w == \"*\") ]]; then
        w="${{w:1:${{#w}}-2}}"
    elif [[ $w == "~/"* ]]; then
        w="$HOME/${{w:2}}"
    fi
    printf '%s\n' "$w"
}}

# COMP_WORDS is split at COMP_WORDBREAKS as well as at blanks: "--url http://h:9" arrives as
# "--url" "http" ":" "//h" ":" "9". Sets words to the words before the cursor as the shell will
# pass them: pieces with no blank between them in COMP_LINE joined again.
_apprelayctl_words() {{
    local line="$COMP_LINE" piece rest i exact=1
    words=()
    for ((i = 0; i < COMP_CWORD; i++)); do
        piece="${{COMP_WORDS[i]}}"
        rest="${{line#"${{line%%[![:space:]]*}}"}}"
        if ((exact)) && [[ $rest == "$piece"* ]]; then
            if ((i > 0)) && [[ $rest == "$line" ]]; then
                words[${{#words[@]}} - 1]+="$piece"
            else
                words+=("$piece")
            fi
            line="${{rest:${{#piece}}}}"
        else
            exact=0 # COMP_LINE does not match (unset): take the words as they are
            words+=("$piece")
        fi
    done
}}

# $1: the program, $2: KIND, then the connection options from the line. The names of KIND on
# the relay, one a line. At most 2 s and nothing on the terminal when the relay is down, slow or
# refuses: completion must not hang the shell or write over the line being edited.
_apprelayctl_names() {{
    local prog="$1" kind="$2"
    shift 2
    timeout 2 "$prog" "$@" {3} "$kind" </dev/null 2>/dev/null
}}

_apprelayctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word opt="" name value spec i nargs=0
    local subs opts valued
    local -a words conn=()
    COMPREPLY=()
    _apprelayctl_words
    for ((i = 1; i < ${{#words[@]}}; i++)); do
        word="${{words[i]}}"
        if [[ -n $opt ]]; then
            if [[ " {4} " == *" $opt "* ]]; then
                conn+=("$opt" "$(_apprelayctl_dequote "$word")")
            fi
            opt=""
            continue
        fi
        _apprelayctl_node "$path"
        if [[ $word == -*=* ]]; then
            name="${{word%%=*}}" value="${{word#*=}}"
            if [[ -z $value && " $valued " == *" $name "* ]]; then
                opt="$name" # "--tenant=" and the cursor: its value is being typed
            elif [[ " {4} " == *" $name "* ]]; then
                conn+=("$name" "$(_apprelayctl_dequote "$value")")
            fi
        elif [[ $word == -* ]]; then
            if [[ " $valued " == *" $word "* ]]; then
                opt="$word"
            fi
        elif [[ " $subs " == *" $word "* ]]; then
            path="${{path:+$path }}$word"
            nargs=0
        else
            nargs=$((nargs + 1))
        fi
    done
    _apprelayctl_node "$path"
    if [[ -n $opt ]]; then
        if [[ $cur == "=" ]]; then
            cur="" # right after "--tenant=": bash's word is the "="
        fi
        spec="$(_apprelayctl_values "$path" "$opt")"
        if [[ -z $spec ]]; then
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return 0
        fi
    elif [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
        return 0
    else
        spec="$(_apprelayctl_args "$path" "$nargs")"
        if [[ $spec != @* ]]; then
            spec="$subs $spec"
        fi
    fi
    if [[ $spec == @* ]]; then
        # Names are matched here, not by compgen -W, which would expand what the relay sent.
        while IFS= read -r name; do
            if [[ -n $name && $name == "$cur"* ]]; then
                COMPREPLY+=("$name")
            fi
        done < <(_apprelayctl_names "$(_apprelayctl_dequote "${{words[0]}}")" "${{spec#@}}" \
            "${{conn[@]}}")
    else
        mapfile -t COMPREPLY < <(compgen -W "$spec" -- "$cur")
    fi
    return 0
}}

complete -F _apprelayctl apprelayctl
)bash",
                       nodes, values, args, k_names_command, join(global, " "));
}

std::string man_page(const CLI::App& root, std::string_view version) {
    // Not root.get_name(): parsing sets that to argv[0], a path.
    const std::string name = "apprelayctl";
    std::string desc = root.get_description();
    if (auto colon = desc.find(": "); colon != std::string::npos) {
        desc = desc.substr(colon + 2); // "apprelayctl: manage ..." -> "manage ..."
    }
    std::string out;
    out += ".\\\" Generated by `apprelayctl man` from the command tree; do not edit.\n";
    out += fmt::format(".TH APPRELAYCTL 1 \"\" \"apprelay {}\" \"User Commands\"\n", roff(version));
    out += ".SH NAME\n" + name + " \\- " + roff(desc) + "\n";
    out += ".SH SYNOPSIS\n"
           "\\fBapprelayctl\\fR [\\fIglobal options\\fR] \\fIcommand\\fR [\\fIarguments\\fR] "
           "[\\fIoptions\\fR]\n";
    out += ".SH DESCRIPTION\n"
           "\\fBapprelayctl\\fR is the client of the relay's admin API: it manages tenants, "
           "connector groups, connectors, applications, enrollment tokens, user certificates "
           "and the fleet's relays.\n"
           "It talks to the relay's admin API over its UNIX socket (mode 0600) or, with "
           "\\fB\\-\\-url\\fR and a bearer token, over loopback TCP.\n"
           ".PP\n"
           "Every command prints a human-readable table or one-line confirmation; with "
           "\\fB\\-\\-json\\fR it prints the API's JSON response as returned (a JSON object for "
           "\\fBmetrics\\fR, \\fBusers issue\\fR, \\fBcompletion\\fR and \\fBman\\fR) and "
           "reports an error as one line "
           "\\fB{\"error\": \"\\fR\\fImessage\\fR\\fB\", \"status\": \\fR\\fIN\\fR\\fB}\\fR on "
           "standard error, where \\fIN\\fR is the relay's HTTP status (0 when the relay did not "
           "answer or the error is local). Global options may be given before or after the "
           "command.\n";
    out += ".SH GLOBAL OPTIONS\n" + roff_option_list(root);

    out += ".SH COMMANDS\n";
    for (const auto& [path, app] : command_nodes(root)) {
        if (path.empty()) {
            continue;
        }
        if (!is_leaf(*app)) {
            out += ".SS \"" + roff(path) + " ...\"\n" + roff(app->get_description()) + ".\n";
            continue;
        }
        out += ".SS \"" + roff(path) + "\"\n";
        std::string synopsis = "\\fBapprelayctl " + roff(path) + "\\fR";
        for (const CLI::Option* p : positionals(*app)) {
            synopsis += " \\fI" + roff(p->get_name(true)) + "\\fR";
        }
        for (const CLI::Option* o : named_options(*app)) {
            if (o == app->get_help_ptr()) {
                continue;
            }
            std::string one = roff_option(*o);
            synopsis += o->get_required() ? " " + one : " [" + one + "]";
        }
        out += synopsis + "\n.PP\n" + roff(app->get_description()) + ".\n";
        for (const CLI::Option* p : positionals(*app)) {
            out += ".TP\n\\fI" + roff(p->get_name(true)) + "\\fR\n" + roff(p->get_description());
            if (auto c = option_choices(*p); !c.empty()) {
                out += ": " + roff(join(c, ", "));
            }
            out += "\n";
        }
        for (const CLI::Option* o : named_options(*app)) {
            if (o == app->get_help_ptr()) {
                continue;
            }
            out += ".TP\n" + roff_option(*o) + "\n" + roff(o->get_description());
            if (o->get_required()) {
                out += " (required)";
            }
            out += "\n";
        }
    }

    out += ".SH EXIT STATUS\n"
           "The same for every command:\n";
    for (const auto& e : k_exit_code_docs) {
        out += fmt::format(".TP\n.B {}\n{}\n", e.code, roff(e.meaning));
    }
    out += ".SH FILES\n"
           ".TP\n.I " +
           roff(std::string(k_default_socket)) +
           "\nthe relay's admin socket when neither \\fB\\-\\-socket\\fR nor "
           "\\fBAPPRELAY_ADMIN_SOCKET\\fR names another\n";
    out += ".SH ENVIRONMENT\n"
           ".TP\n.B APPRELAY_ADMIN_SOCKET\nthe admin socket (\\fB\\-\\-socket\\fR overrides it)\n"
           ".TP\n.B APPRELAY_ADMIN_TOKEN\nthe bearer token for \\fB\\-\\-url\\fR "
           "(\\fB\\-\\-token\\fR overrides it)\n";
    out += ".SH EXAMPLES\n"
           ".nf\n"
           "export APPRELAY_ADMIN_SOCKET=/var/lib/apprelay/admin.sock\n"
           "apprelayctl \\-\\-tenant contoso groups create site\\-a\n"
           "apprelayctl \\-\\-tenant contoso apps create hr \\-\\-hostname hr.contoso.com "
           "\\e\n"
           "    \\-\\-backend 10.1.0.5:443 \\-\\-group site\\-a\n"
           "apprelayctl \\-\\-tenant contoso tokens create \\-\\-group site\\-a\n"
           "apprelayctl \\-\\-tenant contoso connectors list \\-\\-json\n"
           "apprelayctl \\-\\-url http://127.0.0.1:9090 \\-\\-token \"$TOKEN\" status\n"
           "apprelayctl completion bash > /etc/bash_completion.d/apprelayctl\n"
           ".fi\n";
    out += ".SH SEE ALSO\n"
           "\\fBapprelay\\fR and \\fBapprelay\\-connector\\fR; the admin API is described in "
           "control/API.md in the apprelay sources.\n";
    return out;
}

} // namespace apprelay::ctl
