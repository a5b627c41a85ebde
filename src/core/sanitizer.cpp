#include "guardia/core/sanitizer.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <vector>

namespace guardia {
namespace {

// Nested scripts (sh -c inside $(...) inside eval ...) deeper than this are refused rather
// than left unchecked.
constexpr int max_nesting = 8;
constexpr std::size_t max_fragment = 80;

constexpr std::array<std::string_view, 18> system_dirs = {
    "bin",  "boot", "dev", "etc",  "home", "lib", "lib32", "lib64", "opt",
    "proc", "root", "run", "sbin", "srv",  "sys", "tmp",   "usr",   "var"};

constexpr std::array<std::string_view, 6> block_device_prefixes = {
    "/dev/sd", "/dev/hd", "/dev/vd", "/dev/xvd", "/dev/nvme", "/dev/mmcblk"};

// Shells whose -c argument is a script, and commands that run their arguments as a command.
constexpr std::array<std::string_view, 8> shells = {"sh",  "bash", "dash", "zsh",
                                                    "ksh", "ash",  "mksh", "busybox-sh"};
constexpr std::array<std::string_view, 17> wrappers = {
    "sudo", "doas",    "exec",   "command", "builtin", "nohup",   "env",    "nice",    "ionice",
    "time", "timeout", "stdbuf", "setsid",  "xargs",   "busybox", "chroot", "unbuffer"};
// Words that may precede a command without being it.
constexpr std::array<std::string_view, 12> keywords = {
    "{", "}", "!", "if", "then", "else", "elif", "do", "while", "until", "fi", "done"};

const std::string rule_rm_system = "recursive rm of a system path";
const std::string rule_rm_no_preserve = "rm with --no-preserve-root";
const std::string rule_mkfs = "filesystem creation (mkfs)";
const std::string rule_format = "the word 'format'";
const std::string rule_drop_table = "SQL DROP TABLE";
const std::string rule_truncate = "the word 'truncate'";
const std::string rule_block_device = "write to a block device";
const std::string rule_nesting = "commands nested too deeply to check";
const std::string rule_nul = "NUL byte in command";

template <std::size_t N>
bool contains(const std::array<std::string_view, N>& list, std::string_view s) {
    for (auto item : list)
        if (item == s) return true;
    return false;
}

char to_lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string to_lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = to_lower(c);
    return out;
}

bool is_word_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// The fragment a refusal quotes: one line, trimmed, at most max_fragment characters.
std::string fragment(std::string_view s) {
    std::string out;
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u == 0x7f) ? ' ' : c;
    }
    auto b = out.find_first_not_of(' ');
    if (b == std::string::npos) return {};
    out = out.substr(b, out.find_last_not_of(' ') - b + 1);
    if (out.size() > max_fragment) {
        out.resize(max_fragment - 3);
        out += "...";
    }
    return out;
}

Error refuse(const std::string& rule, std::string_view where) {
    return Error(errc::security_violation,
                 "command refused by the sanitizer: " + rule + ": \"" + fragment(where) + "\"");
}

// The text around a match, up to the neighbouring command separators: enough to recognise it.
std::string_view context(std::string_view text, std::size_t begin, std::size_t end) {
    auto is_sep = [](char c) { return c == ';' || c == '&' || c == '|' || c == '\n'; };
    std::size_t b = begin;
    while (b > 0 && !is_sep(text[b - 1]) && begin - b < 30) --b;
    std::size_t e = end;
    while (e < text.size() && !is_sep(text[e]) && e - end < 40) ++e;
    return text.substr(b, e - b);
}

// Position of `word` in `lc` as a whole word (regex \bword\b), or npos.
std::size_t find_word(std::string_view lc, std::string_view word, std::size_t from = 0) {
    for (auto p = lc.find(word, from); p != std::string_view::npos; p = lc.find(word, p + 1)) {
        bool left = p == 0 || !is_word_char(lc[p - 1]);
        bool right = p + word.size() == lc.size() || !is_word_char(lc[p + word.size()]);
        if (left && right) return p;
    }
    return std::string_view::npos;
}

bool is_block_device(std::string_view lc) {
    for (auto prefix : block_device_prefixes)
        if (lc.starts_with(prefix)) return true;
    return false;
}

// Rules that hold for the text as written, wherever it sits (quoted SQL for psql -c, a
// redirection inside an ssh command...): the original's regexes, made precise.
Result<void> check_text_rules(std::string_view text) {
    const std::string lc = to_lower(text);
    constexpr auto npos = std::string_view::npos;
    if (auto p = find_word(lc, "mkfs"); p != npos)
        return refuse(rule_mkfs, context(text, p, p + 4));
    if (auto p = find_word(lc, "format"); p != npos)
        return refuse(rule_format, context(text, p, p + 6));
    if (auto p = find_word(lc, "truncate"); p != npos)
        return refuse(rule_truncate, context(text, p, p + 8));
    for (auto p = find_word(lc, "drop"); p != npos; p = find_word(lc, "drop", p + 1)) {
        std::size_t q = p + 4;
        while (q < lc.size() && is_space(lc[q])) ++q;
        if (q > p + 4 && find_word(lc, "table", q) == q)
            return refuse(rule_drop_table, context(text, p, q + 5));
    }
    // > file, >> file, >| file, >& file, and dd's of=file, the target possibly quoted.
    auto target_at = [&](std::size_t j) {
        while (j < lc.size() && (lc[j] == '\'' || lc[j] == '"')) ++j;
        return is_block_device(std::string_view(lc).substr(j));
    };
    for (auto p = lc.find('>'); p != npos; p = lc.find('>', p + 1)) {
        std::size_t j = p + 1;
        if (j < lc.size() && (lc[j] == '>' || lc[j] == '|' || lc[j] == '&')) ++j;
        while (j < lc.size() && is_space(lc[j])) ++j;
        if (target_at(j)) return refuse(rule_block_device, context(text, p, j));
    }
    for (auto p = lc.find("of="); p != npos; p = lc.find("of=", p + 1)) {
        if (p > 0 && is_word_char(lc[p - 1])) continue;
        if (target_at(p + 3)) return refuse(rule_block_device, context(text, p, p + 3));
    }
    return {};
}

// ------------------------------------------------------------------ a small sh lexer
//
// Enough of POSIX sh to find commands and their words: quotes, backslashes, comments,
// separators, pipes, redirections and command substitutions. Words carry their unquoted value.

struct Word {
    std::string value;
    std::size_t begin = 0;  // source range in the text being lexed
    std::size_t end = 0;
};

struct Redirect {
    std::string op;
    Word target;
};

struct Stage {  // one simple command of a pipeline
    std::vector<Word> words;
    std::vector<Redirect> redirects;
    std::vector<std::string> here_strings;  // cmd <<< 'text'
};

struct Pipeline {
    std::vector<Stage> stages;
};

struct Script {
    std::vector<Pipeline> pipelines;
    std::vector<std::string> substitutions;  // inner text of every $(...) and `...`
};

class Lexer {
public:
    explicit Lexer(std::string_view text) : text_(text) {}

    Script run() {
        const std::size_t n = text_.size();
        std::size_t i = 0;
        while (i < n) {
            const char c = text_[i];
            const char next = i + 1 < n ? text_[i + 1] : '\0';
            switch (c) {
                case ' ':
                case '\t':
                case '\r':
                case '\f':
                case '\v':
                    finish_word(i);
                    ++i;
                    break;
                case '\n':
                case ';':
                case '(':
                case ')':
                    finish_word(i);
                    finish_pipeline();
                    ++i;
                    break;
                case '&':
                    finish_word(i);
                    if (next == '>') {  // &> file, &>> file
                        std::size_t len = i + 2 < n && text_[i + 2] == '>' ? 3 : 2;
                        pending_redirect_ = std::string(text_.substr(i, len));
                        i += len;
                    } else {
                        finish_pipeline();
                        i += next == '&' ? 2 : 1;
                    }
                    break;
                case '|':
                    finish_word(i);
                    if (next == '|') {
                        finish_pipeline();
                        i += 2;
                    } else {
                        finish_stage();
                        i += next == '&' ? 2 : 1;
                    }
                    break;
                case '<':
                case '>': {
                    // Digits glued to the operator name a file descriptor (2>&1), not a word.
                    if (in_word_ && !word_quoted_ &&
                        word_.find_first_not_of("0123456789") == std::string::npos)
                        reset_word();
                    else
                        finish_word(i);
                    std::size_t len = redirect_length(i);
                    pending_redirect_ = std::string(text_.substr(i, len));
                    i += len;
                    break;
                }
                case '\'': {
                    start_word(i);
                    word_quoted_ = true;
                    auto close = text_.find('\'', i + 1);
                    if (close == std::string_view::npos) close = n;
                    word_ += text_.substr(i + 1, close - i - 1);
                    i = close < n ? close + 1 : n;
                    break;
                }
                case '"':
                    start_word(i);
                    word_quoted_ = true;
                    ++i;
                    while (i < n && text_[i] != '"') {
                        if (text_[i] == '\\' && i + 1 < n &&
                            std::string_view("$`\"\\\n").find(text_[i + 1]) !=
                                std::string_view::npos) {
                            if (text_[i + 1] != '\n') word_ += text_[i + 1];
                            i += 2;
                        } else if (text_[i] == '`' ||
                                   (text_[i] == '$' && i + 1 < n && text_[i + 1] == '(')) {
                            i = read_substitution(i);
                        } else {
                            word_ += text_[i++];
                        }
                    }
                    if (i < n) ++i;
                    break;
                case '\\':
                    if (next == '\n') {  // line continuation
                        i += 2;
                        break;
                    }
                    start_word(i);
                    word_quoted_ = true;
                    if (i + 1 < n) word_ += next;
                    i += 2;
                    break;
                case '#':
                    if (in_word_) {
                        word_ += c;
                        ++i;
                    } else {
                        while (i < n && text_[i] != '\n') ++i;
                    }
                    break;
                case '`':
                    start_word(i);
                    i = read_substitution(i);
                    break;
                case '$':
                    start_word(i);
                    if (next == '(')
                        i = read_substitution(i);
                    else
                        word_ += text_[i++];
                    break;
                default:
                    start_word(i);
                    word_ += c;
                    ++i;
            }
        }
        finish_word(n);
        finish_pipeline();
        return std::move(script_);
    }

private:
    std::size_t redirect_length(std::size_t i) const {
        for (std::string_view op : {"<<<", "<<-", "<<", "<>", "<&", ">>", ">|", ">&"})
            if (text_.substr(i).starts_with(op)) return op.size();
        return 1;
    }

    // At "$(" or "`": records the inner text for its own check, keeps the raw text in the word
    // (so that an operand like "$(x)/" is still seen as starting with an expansion).
    std::size_t read_substitution(std::size_t i) {
        const std::size_t n = text_.size();
        std::size_t inner_begin, j;
        if (text_[i] == '`') {
            inner_begin = j = i + 1;
            while (j < n && text_[j] != '`') j += text_[j] == '\\' ? 2 : 1;
        } else {
            inner_begin = j = i + 2;
            int depth = 1;
            while (j < n) {
                const char c = text_[j];
                if (c == '\\') {
                    j += 2;
                    continue;
                }
                if (c == '\'') {
                    auto close = text_.find('\'', j + 1);
                    j = close == std::string_view::npos ? n : close + 1;
                    continue;
                }
                if (c == '(') ++depth;
                if (c == ')' && --depth == 0) break;
                ++j;
            }
        }
        j = std::min(j, n);
        script_.substitutions.emplace_back(text_.substr(inner_begin, j - inner_begin));
        const std::size_t end = j < n ? j + 1 : n;
        word_ += text_.substr(i, end - i);
        return end;
    }

    void start_word(std::size_t i) {
        if (!in_word_) {
            in_word_ = true;
            word_begin_ = i;
        }
    }

    void reset_word() {
        word_.clear();
        in_word_ = false;
        word_quoted_ = false;
    }

    void finish_word(std::size_t end) {
        if (!in_word_) return;
        Word w{std::move(word_), word_begin_, end};
        reset_word();
        if (pending_redirect_.empty()) {
            stage_.words.push_back(std::move(w));
        } else if (pending_redirect_ == "<<<") {
            stage_.here_strings.push_back(std::move(w.value));
        } else if (!pending_redirect_.starts_with("<<")) {  // a here-document delimiter is no file
            stage_.redirects.push_back(Redirect{pending_redirect_, std::move(w)});
        }
        pending_redirect_.clear();
    }

    void finish_stage() {
        pending_redirect_.clear();
        if (!stage_.words.empty() || !stage_.redirects.empty() || !stage_.here_strings.empty())
            pipeline_.stages.push_back(std::move(stage_));
        stage_ = Stage{};
    }

    void finish_pipeline() {
        finish_stage();
        if (!pipeline_.stages.empty()) script_.pipelines.push_back(std::move(pipeline_));
        pipeline_ = Pipeline{};
    }

    std::string_view text_;
    Script script_;
    Pipeline pipeline_;
    Stage stage_;
    std::string word_;
    bool in_word_ = false;
    bool word_quoted_ = false;
    std::size_t word_begin_ = 0;
    std::string pending_redirect_;  // a redirection operator waiting for its target word
};

// ------------------------------------------------------------------ rm operands

// Lexical path components without "", "." and "..": what the path names, with globs kept.
std::vector<std::string_view> components(std::string_view path) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i <= path.size()) {
        auto slash = path.find('/', i);
        if (slash == std::string_view::npos) slash = path.size();
        auto comp = path.substr(i, slash - i);
        if (comp == "..") {
            if (!out.empty()) out.pop_back();
        } else if (!comp.empty() && comp != ".") {
            out.push_back(comp);
        }
        i = slash + 1;
    }
    return out;
}

// Drops trailing "*" components (dir/*, dir/*/*: everything in dir); true if any was dropped.
bool strip_trailing_globs(std::vector<std::string_view>& comps) {
    bool stripped = false;
    while (!comps.empty() && comps.back().find_first_not_of('*') == std::string_view::npos) {
        comps.pop_back();
        stripped = true;
    }
    return stripped;
}

// "" or "/" or "/*" or "/." ...: the directory the path is relative to, or all of it.
bool is_whole_base(std::string_view rest) {
    auto comps = components(rest);
    strip_trailing_globs(comps);
    return comps.empty();
}

// Length of the expansion a word starts with: ~user, $name, ${...}, $(...), `...`.
std::size_t expansion_length(std::string_view op) {
    if (op[0] == '~' || (op[0] == '$' && op.size() > 1 && is_word_char(op[1]))) {
        std::size_t i = 1;
        while (i < op.size() && (is_word_char(op[i]) || (op[0] == '~' && op[i] != '/'))) ++i;
        return i;
    }
    if (op.starts_with("${")) return std::min(op.find('}'), op.size() - 1) + 1;
    if (op.starts_with("`")) return std::min(op.find('`', 1), op.size() - 1) + 1;
    if (op.starts_with("$(")) {
        int depth = 0;
        for (std::size_t i = 1; i < op.size(); ++i) {
            if (op[i] == '(') ++depth;
            if (op[i] == ')' && --depth == 0) return i + 1;
        }
        return op.size();
    }
    return 0;
}

// `op` is a lower-cased, unquoted rm operand.
bool is_protected_operand(std::string_view op) {
    if (op.empty()) return false;
    if (op[0] == '/') {
        auto comps = components(op);
        strip_trailing_globs(comps);
        if (comps.empty()) return true;
        if (comps.size() > 1) return false;
        // /etc, /etc/, /etc/*, and globs that may match one: /e*, /[eu]*
        const std::string pattern(comps[0]);
        for (auto dir : system_dirs)
            if (::fnmatch(pattern.c_str(), std::string(dir).c_str(), 0) == 0) return true;
        return false;
    }
    if (auto len = expansion_length(op); len > 0) {
        auto head = op.substr(0, len);
        auto rest = op.substr(len);
        if (head[0] == '~') return is_whole_base(rest);  // ~, ~/, ~/*, ~user
        if (head == "$home" || head == "${home}") return is_whole_base(rest);
        // "$dir"/ and "$dir"/*: / itself when $dir is empty or unset.
        return rest.starts_with('/') && is_whole_base(rest);
    }
    // *, ./*, */*: everything in the (unknown) working directory.
    auto comps = components(op);
    return strip_trailing_globs(comps) && comps.empty();
}

// ------------------------------------------------------------------ the checks

Result<void> check_script(std::string_view text, int depth);

std::string command_name(std::string_view word) {
    auto slash = word.rfind('/');
    return to_lower(slash == std::string_view::npos ? word : word.substr(slash + 1));
}

bool is_assignment(std::string_view word) {
    auto eq = word.find('=');
    if (eq == 0 || eq == std::string_view::npos) return false;
    if (word[0] >= '0' && word[0] <= '9') return false;
    for (std::size_t i = 0; i < eq; ++i)
        if (!is_word_char(word[i])) return false;
    return true;
}

std::string_view stage_text(std::string_view text, const Stage& stage) {
    if (stage.words.empty()) return text;
    auto b = stage.words.front().begin;
    return text.substr(b, stage.words.back().end - b);
}

bool is_prefix_of(std::string_view abbrev, std::string_view option) {
    return !abbrev.empty() && option.starts_with(abbrev);
}

Result<void> check_rm(const std::vector<Word>& words, std::size_t first, std::string_view where) {
    bool recursive_or_forced = false;
    bool no_preserve_root = false;
    bool options_ended = false;
    std::vector<std::string> operands;
    for (std::size_t i = first; i < words.size(); ++i) {
        const std::string v = to_lower(words[i].value);
        if (!options_ended && v == "--") {
            options_ended = true;
        } else if (!options_ended && v.starts_with("--")) {
            // GNU rm takes any unambiguous abbreviation of a long option: --rec, --no-pres.
            auto name = std::string_view(v).substr(2, v.find('=') - 2);
            if (is_prefix_of(name, "recursive") || is_prefix_of(name, "force"))
                recursive_or_forced = true;
            if (is_prefix_of(name, "no-preserve-root")) no_preserve_root = true;
        } else if (!options_ended && v.size() > 1 && v[0] == '-') {
            if (v.find_first_of("rf") != std::string::npos) recursive_or_forced = true;
        } else {
            // GNU rm also takes options after operands, so keep scanning.
            operands.push_back(v);
        }
    }
    if (no_preserve_root) return refuse(rule_rm_no_preserve, where);
    if (recursive_or_forced)
        for (const auto& op : operands)
            if (is_protected_operand(op)) return refuse(rule_rm_system, where);
    return {};
}

// What a shell invocation runs: sh -c 'x', bash -lc 'x', sh -e -c 'x' run the script x;
// sh file runs a file; sh and sh -s read the script from stdin.
struct ShellArgs {
    std::optional<std::string> script;  // the -c argument
    bool reads_stdin = false;
};

ShellArgs parse_shell_args(const std::vector<Word>& words, std::size_t first) {
    bool has_c = false;
    bool has_s = false;
    std::size_t i = first;
    for (; i < words.size(); ++i) {
        const std::string v = to_lower(words[i].value);
        if (v == "--") {
            ++i;
            break;
        }
        if (v.size() < 2 || (v[0] != '-' && v[0] != '+')) break;
        if (v[1] != '-') {
            has_c = has_c || v.find('c') != std::string::npos;
            has_s = has_s || v.find('s') != std::string::npos;
        }
        if (v == "-o" || v == "+o") ++i;  // takes an argument
    }
    ShellArgs out;
    if (has_c && i < words.size()) out.script = words[i].value;
    out.reads_stdin = !has_c && (has_s || i >= words.size());
    return out;
}

std::string join_values(const std::vector<Word>& words, std::size_t first) {
    std::string out;
    for (std::size_t i = first; i < words.size(); ++i) {
        if (i > first) out += ' ';
        out += words[i].value;
    }
    return out;
}

bool is_shell(std::string_view name) {
    return contains(shells, name);
}

// Whether this stage runs a shell that reads its script from stdin (... | sh).
bool reads_script_from_stdin(const Stage& stage) {
    std::size_t i = 0;
    while (i < stage.words.size() && is_assignment(stage.words[i].value)) ++i;
    if (i == stage.words.size()) return false;
    auto name = command_name(stage.words[i].value);
    if (name == "sudo" || name == "doas" || name == "exec") {
        if (++i == stage.words.size()) return false;
        name = command_name(stage.words[i].value);
    }
    return is_shell(name) && parse_shell_args(stage.words, i + 1).reads_stdin;
}

Result<void> check_stage(const Stage& stage, std::string_view text, int depth) {
    const auto where = stage_text(text, stage);
    for (const auto& r : stage.redirects)
        if (r.op.find('>') != std::string::npos && is_block_device(to_lower(r.target.value)))
            return refuse(rule_block_device, where);

    // The words as the shell sees them, quotes removed: mk''fs is mkfs.
    const auto& words = stage.words;
    if (auto r = check_text_rules(join_values(words, 0)); !r) return r;

    std::size_t i = 0;
    while (i < words.size() &&
           (contains(keywords, to_lower(words[i].value)) || is_assignment(words[i].value)))
        ++i;
    if (i == words.size()) return {};
    std::string name = command_name(words[i].value);

    // sudo -u x rm ..., timeout 5 rm ...: the command is the first word we have a rule for.
    if (contains(wrappers, name)) {
        for (++i; i < words.size(); ++i) {
            name = command_name(words[i].value);
            if (name == "rm" || name == "tee" || name == "eval" || name == "su" || name == "ssh" ||
                is_shell(name))
                break;
        }
        if (i == words.size()) return {};
    }

    if (name == "rm") return check_rm(words, i + 1, where);
    if (name == "tee") {
        for (std::size_t j = i + 1; j < words.size(); ++j)
            if (is_block_device(to_lower(words[j].value))) return refuse(rule_block_device, where);
        return {};
    }
    if (is_shell(name)) {
        if (auto script = parse_shell_args(words, i + 1).script)
            if (auto r = check_script(*script, depth + 1); !r) return r;
        for (const auto& h : stage.here_strings)
            if (auto r = check_script(h, depth + 1); !r) return r;
        return {};
    }
    if (name == "eval") return check_script(join_values(words, i + 1), depth + 1);
    if (name == "su") {
        for (std::size_t j = i + 1; j < words.size(); ++j) {
            const std::string v = to_lower(words[j].value);
            if ((v == "-c" || v == "--command") && j + 1 < words.size())
                return check_script(words[j + 1].value, depth + 1);
            if (v.starts_with("--command="))
                return check_script(std::string_view(words[j].value).substr(10), depth + 1);
        }
        return {};
    }
    if (name == "ssh") {
        // ssh [options] host command...: the remote shell runs the words after the host.
        std::size_t j = i + 1;
        while (j < words.size() && words[j].value.starts_with('-') && words[j].value != "--") {
            const auto& v = words[j].value;
            const bool takes_argument =
                v.size() == 2 &&
                std::string_view("BbcDEeFIiJLlmOopQRSWw").find(v[1]) != std::string_view::npos;
            j += takes_argument ? 2 : 1;
        }
        if (j < words.size() && words[j].value == "--") ++j;
        return check_script(join_values(words, j + 1), depth + 1);
    }
    return {};
}

Result<void> check_script(std::string_view text, int depth) {
    if (depth > max_nesting) return refuse(rule_nesting, text);
    if (auto r = check_text_rules(text); !r) return r;
    const Script script = Lexer(text).run();
    for (const auto& pipeline : script.pipelines) {
        const auto& stages = pipeline.stages;
        for (std::size_t k = 0; k < stages.size(); ++k) {
            if (auto r = check_stage(stages[k], text, depth); !r) return r;
            // echo 'rm -rf /' | sh: whatever earlier stages print is the shell's script.
            if (k > 0 && reads_script_from_stdin(stages[k]))
                for (std::size_t j = 0; j < k; ++j)
                    for (const auto& w : stages[j].words)
                        if (auto r = check_script(w.value, depth + 1); !r) return r;
        }
    }
    for (const auto& inner : script.substitutions)
        if (auto r = check_script(inner, depth + 1); !r) return r;
    return {};
}

}  // namespace

Result<void> sanitize_command(std::string_view command) {
    if (auto nul = command.find('\0'); nul != std::string_view::npos)
        return refuse(rule_nul, command.substr(0, nul));
    return check_script(command, 0);
}

bool is_system_path(std::string_view path) {
    if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
    if (path == "/") return true;
    if (!path.starts_with('/')) return false;
    return contains(system_dirs, path.substr(1));
}

}  // namespace guardia
