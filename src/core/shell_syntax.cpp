#include "guardia/core/shell_syntax.hpp"

#include <algorithm>
#include <array>
#include <initializer_list>
#include <unordered_set>

namespace guardia::shell {
namespace {

constexpr std::array<std::string_view, 22> reserved_words = {
    "{",    "}",     "!",    "[[",   "]]",  "if",     "then",   "else",
    "elif", "fi",    "do",   "done", "while", "until", "for",   "select",
    "case", "esac",  "in",   "function", "time", "coproc"};

// Only space and tab separate words: bash reads CR, VT and FF as ordinary characters.
bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_meta(char c) {
    return c == ';' || c == '&' || c == '|' || c == '<' || c == '>' || c == '(' || c == ')' ||
           c == '\n' || is_blank(c);
}
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void append_utf8(std::string& out, unsigned long cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x110000) {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

void add_literal(std::vector<WordPart>& parts, char c, bool quoted) {
    if (parts.empty() || parts.back().kind != PartKind::literal || parts.back().quoted != quoted)
        parts.push_back(WordPart{PartKind::literal, {}, quoted, {}});
    parts.back().text += c;
}
void add_literal(std::vector<WordPart>& parts, std::string_view s, bool quoted) {
    for (char c : s) add_literal(parts, c, quoted);
}

// Thrown inside the parser only, turned into an Error at parse()'s boundary: a parse error
// unwinds many recursive frames at once.
struct SyntaxError {
    std::string what;
};

struct PendingHeredoc {
    bool in_other = false;
    std::size_t command = 0, redirect = 0;
    std::string delimiter;
    bool strip_tabs = false;
};

class Parser {
public:
    Parser(std::string_view src, std::size_t pos, std::size_t base, int depth,
           const ParseLimits& limits, bool inherit_pipe)
        : src_(src), pos_(pos), base_(base), depth_(depth), limits_(limits),
          inherit_pipe_(inherit_pipe) {
        if (static_cast<std::size_t>(depth_) > limits_.max_depth)
            throw SyntaxError{"nesting deeper than " + std::to_string(limits_.max_depth) +
                              " levels"};
        script_ = std::make_shared<Script>();
    }

    // The whole input as one script.
    std::shared_ptr<Script> parse_all() {
        parse_list({});
        skip_space(true);
        if (pos_ < src_.size()) throw SyntaxError{"unexpected '" + std::string(1, src_[pos_]) +
                                                   "' at offset " + std::to_string(pos_)};
        finish(src_.size());
        return script_;
    }

    // A $( ... ) body: up to the matching ')', which is consumed.
    std::shared_ptr<Script> parse_substitution() {
        parse_list({});
        skip_space(true);
        if (pos_ >= src_.size() || src_[pos_] != ')')
            throw SyntaxError{"unterminated $( or <( substitution"};
        finish(pos_);
        ++pos_;
        return script_;
    }

    std::size_t pos() const { return pos_; }

private:
    std::string_view src_;
    std::size_t pos_;
    std::size_t base_;  // offset of this script's text in src_
    int depth_;
    const ParseLimits& limits_;
    bool inherit_pipe_;
    std::shared_ptr<Script> script_;
    std::vector<PendingHeredoc> pending_;
    Connector connector_ = Connector::none;
    int piped_compound_ = 0;
    int loop_depth_ = 0;
    int function_ = -1;
    int recursion_ = 0;  // frames of this parser's own recursion (groups, ${...} in ${...})
    // "$((" read as arithmetic and found not to be: never tried twice (exponential otherwise).
    std::shared_ptr<std::unordered_set<const char*>> arith_failed_ =
        std::make_shared<std::unordered_set<const char*>>();

    // Every recursive step counts against the same limit as nested parsers: deeply nested
    // input is refused instead of overflowing the stack.
    struct Deeper {
        Parser& p;
        explicit Deeper(Parser& parser) : p(parser) {
            if (++p.recursion_ + p.depth_ > static_cast<int>(p.limits_.max_depth) * 4)
                throw SyntaxError{"nesting deeper than the parser follows"};
        }
        ~Deeper() { --p.recursion_; }
        Deeper(const Deeper&) = delete;
        Deeper& operator=(const Deeper&) = delete;
    };

    void finish(std::size_t end) {
        if (!pending_.empty())
            throw SyntaxError{"here-document '" + pending_.front().delimiter + "' has no body"};
        script_->source = std::string(src_.substr(base_, end - base_));
    }

    bool at(char c) const { return pos_ < src_.size() && src_[pos_] == c; }
    bool at(std::string_view s) const { return src_.substr(pos_, s.size()) == s; }
    char peek(std::size_t ahead = 0) const {
        return pos_ + ahead < src_.size() ? src_[pos_ + ahead] : '\0';
    }

    // Blanks, line continuations and comments; newlines too when asked (reading any pending
    // here-document bodies after each).
    void skip_space(bool newlines) {
        while (pos_ < src_.size()) {
            char c = src_[pos_];
            if (is_blank(c)) {
                ++pos_;
            } else if (c == '\\' && peek(1) == '\n') {
                pos_ += 2;
            } else if (c == '#') {
                while (pos_ < src_.size() && src_[pos_] != '\n') ++pos_;
            } else if (c == '\n' && newlines) {
                ++pos_;
                read_heredocs();
                connector_ = Connector::seq;
            } else {
                break;
            }
        }
    }

    // The next word if it is a plain unquoted word (for reserved-word checks), else "".
    std::string_view peek_plain_word() const {
        std::size_t p = pos_;
        while (p < src_.size() && !is_meta(src_[p])) {
            char c = src_[p];
            if (c == '\'' || c == '"' || c == '\\' || c == '$' || c == '`') return {};
            ++p;
        }
        return src_.substr(pos_, p - pos_);
    }
    bool at_reserved(std::string_view w) const { return peek_plain_word() == w; }
    void expect_reserved(std::string_view w) {
        skip_space(true);
        if (!at_reserved(w)) throw SyntaxError{"expected '" + std::string(w) + "'"};
        pos_ += w.size();
    }

    bool at_case_end() const { return at(";;") || at(";&"); }

    void parse_list(std::initializer_list<std::string_view> terms) {
        while (true) {
            skip_space(true);
            if (pos_ >= src_.size() || at(')') || at_case_end()) return;
            auto w = peek_plain_word();
            for (auto t : terms)
                if (w == t) return;
            parse_and_or();
            skip_space(false);
            if (at(';') && !at_case_end()) {
                ++pos_;
                connector_ = Connector::seq;
            } else if (at('&') && !at("&&") && !at("&>")) {
                ++pos_;
                connector_ = Connector::background;
            } else if (!at('\n')) {
                return;
            }
        }
    }

    void parse_and_or() {
        parse_pipeline();
        while (true) {
            skip_space(false);
            if (at("&&") || at("||")) {
                connector_ = at("&&") ? Connector::and_if : Connector::or_if;
                pos_ += 2;
                skip_space(true);
                parse_pipeline();
            } else {
                return;
            }
        }
    }

    void parse_pipeline() {
        skip_space(false);
        while (at_reserved("!") || at_reserved("time") || at_reserved("coproc")) {
            bool is_time = at_reserved("time");
            pos_ += peek_plain_word().size();
            skip_space(false);
            if (is_time && at_reserved("-p")) pos_ += 2;
            skip_space(false);
        }
        parse_command(false);
        while (true) {
            skip_space(false);
            if ((at('|') && !at("||"))) {
                pos_ += at("|&") ? 2 : 1;
                connector_ = Connector::pipe;
                skip_space(true);
                parse_command(true);
            } else {
                return;
            }
        }
    }

    void parse_command(bool piped) {
        Deeper guard(*this);
        skip_space(false);
        if (pos_ >= src_.size()) throw SyntaxError{"a command is missing at the end"};
        if (piped) ++piped_compound_;
        struct Restore {
            int& v;
            bool on;
            ~Restore() {
                if (on) --v;
            }
        } restore{piped_compound_, piped};
        auto w = peek_plain_word();
        if (w == "{") {
            pos_ += 1;
            parse_list({"}"});
            expect_reserved("}");
            compound_redirects();
        } else if (at('(')) {
            if (peek(1) == '(') {
                // (( arithmetic )): its words may hold substitutions.
                pos_ += 2;
                Word word;
                word.begin = pos_ - base_;
                read_arith_body(word.parts, "((");
                word.end = pos_ - base_;
                script_->other_words.push_back(std::move(word));
            } else {
                ++pos_;
                parse_list({});
                skip_space(true);
                if (!at(')')) throw SyntaxError{"unterminated ( subshell"};
                ++pos_;
            }
            compound_redirects();
        } else if (w == "if") {
            pos_ += 2;
            parse_list({"then"});
            expect_reserved("then");
            parse_list({"elif", "else", "fi"});
            while (true) {
                skip_space(true);
                if (at_reserved("elif")) {
                    pos_ += 4;
                    parse_list({"then"});
                    expect_reserved("then");
                    parse_list({"elif", "else", "fi"});
                } else if (at_reserved("else")) {
                    pos_ += 4;
                    parse_list({"fi"});
                } else {
                    break;
                }
            }
            expect_reserved("fi");
            compound_redirects();
        } else if (w == "while" || w == "until") {
            pos_ += w.size();
            ++loop_depth_;
            parse_list({"do"});
            expect_reserved("do");
            parse_list({"done"});
            expect_reserved("done");
            --loop_depth_;
            compound_redirects();
        } else if (w == "for" || w == "select") {
            pos_ += w.size();
            skip_space(false);
            if (at("((")) {
                pos_ += 2;
                Word word;
                read_arith_body(word.parts, "((");
                script_->other_words.push_back(std::move(word));
            } else {
                Word name;
                if (!read_word(name)) throw SyntaxError{"'for' without a name"};
                skip_space(true);
                if (at_reserved("in")) {
                    pos_ += 2;
                    while (true) {
                        skip_space(false);
                        if (pos_ >= src_.size() || at(';') || at('\n')) break;
                        Word item;
                        if (!read_word(item)) throw SyntaxError{"unexpected token in 'for' list"};
                        script_->other_words.push_back(std::move(item));
                    }
                }
            }
            skip_space(false);
            if (at(';')) ++pos_;
            skip_space(true);
            ++loop_depth_;
            if (at_reserved("{")) {
                pos_ += 1;
                parse_list({"}"});
                expect_reserved("}");
            } else {
                expect_reserved("do");
                parse_list({"done"});
                expect_reserved("done");
            }
            --loop_depth_;
            compound_redirects();
        } else if (w == "case") {
            pos_ += 4;
            skip_space(false);
            Word subject;
            if (!read_word(subject)) throw SyntaxError{"'case' without a word"};
            script_->other_words.push_back(std::move(subject));
            expect_reserved("in");
            while (true) {
                skip_space(true);
                if (at_reserved("esac")) {
                    pos_ += 4;
                    break;
                }
                if (pos_ >= src_.size()) throw SyntaxError{"'case' without 'esac'"};
                if (at('(')) ++pos_;
                while (true) {
                    skip_space(false);
                    Word pattern;
                    if (!read_word(pattern)) throw SyntaxError{"bad 'case' pattern"};
                    script_->other_words.push_back(std::move(pattern));
                    skip_space(false);
                    if (at('|')) {
                        ++pos_;
                        continue;
                    }
                    if (at(')')) {
                        ++pos_;
                        break;
                    }
                    throw SyntaxError{"bad 'case' pattern"};
                }
                parse_list({"esac"});
                skip_space(true);
                if (at(";;&")) pos_ += 3;
                else if (at(";;") || at(";&")) pos_ += 2;
            }
            compound_redirects();
        } else if (w == "function") {
            pos_ += 8;
            skip_space(false);
            Word name;
            if (!read_word(name)) throw SyntaxError{"'function' without a name"};
            skip_space(false);
            if (at('(')) {
                ++pos_;
                skip_space(false);
                if (!at(')')) throw SyntaxError{"bad function definition"};
                ++pos_;
            }
            function_body(name);
        } else if (w == "[[") {
            pos_ += 2;
            while (true) {
                skip_space(true);
                if (pos_ >= src_.size()) throw SyntaxError{"'[[' without ']]'"};
                if (at_reserved("]]")) {
                    pos_ += 2;
                    break;
                }
                char c = src_[pos_];
                if (c == '&' || c == '|' || c == '<' || c == '>' || c == '(' || c == ')' ||
                    c == ';') {
                    ++pos_;
                    continue;
                }
                Word word;
                if (!read_word(word)) throw SyntaxError{"bad '[[' expression"};
                script_->other_words.push_back(std::move(word));
            }
            compound_redirects();
        } else if (w == "}" || w == "then" || w == "else" || w == "elif" || w == "fi" ||
                   w == "do" || w == "done" || w == "esac" || w == "in" || w == "]]") {
            throw SyntaxError{"unexpected '" + std::string(w) + "'"};
        } else {
            parse_simple();
        }
    }

    // A function body: any compound command, its simple commands tagged with the function.
    void function_body(const Word& name) {
        skip_space(true);
        FunctionDef def;
        def.name = name.literal().value_or(std::string());
        def.begin = name.begin;
        int index = static_cast<int>(script_->functions.size());
        script_->functions.push_back(def);
        int outer = function_;
        function_ = index;
        parse_command(false);
        function_ = outer;
        script_->functions[static_cast<std::size_t>(index)].end = pos_ - base_;
    }

    void compound_redirects() {
        while (true) {
            skip_space(false);
            Redirect r;
            if (!try_redirect(r, true)) return;
        }
    }

    void parse_simple() {
        SimpleCommand cmd;
        cmd.begin = pos_ - base_;
        cmd.before = connector_;
        cmd.stdin_from_pipe = connector_ == Connector::pipe || piped_compound_ > 0 || inherit_pipe_;
        cmd.loop_depth = loop_depth_;
        cmd.function_index = function_;
        connector_ = Connector::seq;
        std::size_t index = script_->commands.size();
        std::size_t last_end = pos_;
        while (true) {
            skip_space(false);
            if (pos_ >= src_.size()) break;
            char c = src_[pos_];
            if (c == ';' || c == '\n' || c == ')' || (c == '&' && !at("&>")) ||
                (c == '|'))
                break;
            if (c == '(' ) {
                // name ( ) body: a function definition.
                if (cmd.words.size() == 1 && cmd.assignments.empty() && cmd.redirects.empty()) {
                    ++pos_;
                    skip_space(false);
                    if (!at(')')) throw SyntaxError{"bad function definition"};
                    ++pos_;
                    Word name = std::move(cmd.words.front());
                    function_body(name);
                    return;
                }
                throw SyntaxError{"unexpected '(' at offset " + std::to_string(pos_)};
            }
            Redirect r;
            if (try_redirect(r, false, &cmd, index)) {
                last_end = pos_;
                continue;
            }
            Word word;
            bool assignment = cmd.words.empty() && looks_like_assignment();
            if (!read_word(word)) throw SyntaxError{"unexpected '" + std::string(1, c) + "'"};
            if (assignment && at('(') && !word.parts.empty() && word.parts.back().kind ==
                PartKind::literal && !word.parts.back().text.empty() &&
                word.parts.back().text.back() == '=') {
                // NAME=( elements ): a bash array; its elements may hold substitutions.
                ++pos_;
                while (true) {
                    skip_space(true);
                    if (pos_ >= src_.size()) throw SyntaxError{"unterminated array"};
                    if (at(')')) {
                        ++pos_;
                        break;
                    }
                    Word element;
                    if (!read_word(element)) throw SyntaxError{"bad array element"};
                    script_->other_words.push_back(std::move(element));
                }
                word.end = pos_ - base_;
            }
            last_end = pos_;
            if (assignment)
                cmd.assignments.push_back(std::move(word));
            else
                cmd.words.push_back(std::move(word));
        }
        cmd.end = last_end - base_;
        script_->commands.push_back(std::move(cmd));
    }

    bool looks_like_assignment() const {
        std::size_t p = pos_;
        if (p >= src_.size() || !is_name_start(src_[p])) return false;
        while (p < src_.size() && is_name_char(src_[p])) ++p;
        if (p < src_.size() && src_[p] == '[') {  // a[i]=v
            while (p < src_.size() && src_[p] != ']' && !is_meta(src_[p])) ++p;
            if (p < src_.size() && src_[p] == ']') ++p;
        }
        if (p < src_.size() && src_[p] == '+') ++p;
        return p < src_.size() && src_[p] == '=';
    }

    // A redirection at pos_, if there is one: [n]op target. Compound commands' redirections
    // go to Script::other_redirects.
    bool try_redirect(Redirect& r, bool compound, SimpleCommand* cmd = nullptr,
                      std::size_t cmd_index = 0) {
        std::size_t start = pos_;
        int fd = -1;
        if (is_digit(peek())) {
            std::size_t p = pos_;
            int v = 0;
            while (p < src_.size() && is_digit(src_[p])) {
                v = std::min(v * 10 + (src_[p] - '0'), 100000);
                ++p;
            }
            if (p < src_.size() && (src_[p] == '<' || src_[p] == '>')) {
                fd = v;
                pos_ = p;
            } else {
                return false;
            }
        } else if (at('{')) {
            std::size_t p = pos_ + 1;
            while (p < src_.size() && is_name_char(src_[p])) ++p;
            if (p > pos_ + 1 && p + 1 < src_.size() && src_[p] == '}' &&
                (src_[p + 1] == '<' || src_[p + 1] == '>')) {
                pos_ = p + 1;
                fd = 1000;
            } else {
                return false;
            }
        }
        RedirectOp op;
        if (at("<<<")) { op = RedirectOp::herestring; pos_ += 3; }
        else if (at("<<-")) { op = RedirectOp::heredoc; pos_ += 3; }
        else if (at("<<")) { op = RedirectOp::heredoc; pos_ += 2; }
        else if (at("<>")) { op = RedirectOp::read_write; pos_ += 2; }
        else if (at("<&")) { op = RedirectOp::dup_input; pos_ += 2; }
        else if (at("<(") && fd < 0) { pos_ = start; return false; }
        else if (at("<")) { op = RedirectOp::input; pos_ += 1; }
        else if (at(">>")) { op = RedirectOp::append; pos_ += 2; }
        else if (at(">|")) { op = RedirectOp::clobber; pos_ += 2; }
        else if (at(">&")) { op = RedirectOp::dup_output; pos_ += 2; }
        else if (at(">(") && fd < 0) { pos_ = start; return false; }
        else if (at(">")) { op = RedirectOp::output; pos_ += 1; }
        else if (at("&>>") && fd < 0) { op = RedirectOp::append_both; pos_ += 3; }
        else if (at("&>") && fd < 0) { op = RedirectOp::output_both; pos_ += 2; }
        else { pos_ = start; return false; }
        bool strip_tabs = src_.substr(start, pos_ - start).ends_with("<<-");
        skip_space(false);
        r.fd = fd;
        r.op = op;
        if (!read_word(r.target)) throw SyntaxError{"a redirection without a target"};
        if (op == RedirectOp::dup_output || op == RedirectOp::dup_input) {
            auto t = r.target.literal();
            bool number = t && !t->empty() &&
                          (std::all_of(t->begin(), t->end(), is_digit) || *t == "-" ||
                           (t->size() > 1 && t->back() == '-' &&
                            std::all_of(t->begin(), t->end() - 1, is_digit)));
            if (!number && op == RedirectOp::dup_output) r.op = RedirectOp::output_both;
        }
        if (op == RedirectOp::heredoc) {
            if (r.target.has_expansion())
                throw SyntaxError{"a here-document delimiter with an expansion"};
            PendingHeredoc h;
            h.delimiter = heredoc_delimiter(r.target);
            h.strip_tabs = strip_tabs;
            r.body_quoted = r.target.is_quoted();
            h.in_other = compound;
            if (compound) {
                h.redirect = script_->other_redirects.size();
            } else {
                h.command = cmd_index;
                h.redirect = cmd->redirects.size();
            }
            pending_.push_back(std::move(h));
        }
        if (compound)
            script_->other_redirects.push_back(std::move(r));
        else
            cmd->redirects.push_back(std::move(r));
        return true;
    }

    std::string heredoc_delimiter(const Word& w) const {
        std::string out;
        for (const auto& p : w.parts) {
            if (p.kind == PartKind::literal)
                out += p.text;
            else
                out += "$" + p.text;  // bash keeps it as written; good enough to find the end
        }
        return out;
    }

    std::vector<std::string> joined_storage_;

    static bool ends_with_odd_backslashes(std::string_view line) {
        std::size_t n = 0;
        while (n < line.size() && line[line.size() - 1 - n] == '\\') ++n;
        return n % 2 == 1;
    }

    bool cmd_heredoc_quoted(const PendingHeredoc& h) const {
        if (h.command >= script_->commands.size()) return false;
        return script_->commands[h.command].redirects[h.redirect].body_quoted;
    }

    void read_heredocs() {
        std::vector<PendingHeredoc> pending;
        pending.swap(pending_);
        for (const auto& h : pending) {
            std::string body;
            const bool quoted = h.in_other ? script_->other_redirects[h.redirect].body_quoted
                                           : cmd_heredoc_quoted(h);
            while (pos_ < src_.size()) {
                std::size_t eol = src_.find('\n', pos_);
                std::size_t line_end = eol == std::string_view::npos ? src_.size() : eol;
                std::string joined;
                std::string_view line = src_.substr(pos_, line_end - pos_);
                pos_ = eol == std::string_view::npos ? src_.size() : eol + 1;
                // In an unquoted here-document, backslash-newline joins lines before the
                // delimiter is looked for (bash does the same).
                while (!quoted && ends_with_odd_backslashes(line) && pos_ < src_.size()) {
                    joined = std::string(line.substr(0, line.size() - 1));
                    std::size_t e2 = src_.find('\n', pos_);
                    std::size_t end2 = e2 == std::string_view::npos ? src_.size() : e2;
                    joined += src_.substr(pos_, end2 - pos_);
                    pos_ = e2 == std::string_view::npos ? src_.size() : e2 + 1;
                    line = joined;
                    joined_storage_.push_back(std::move(joined));
                    line = joined_storage_.back();
                }
                if (h.strip_tabs)
                    while (!line.empty() && line.front() == '\t') line.remove_prefix(1);
                if (line == h.delimiter) break;
                body += line;
                body += '\n';
            }
            Redirect& r = h.in_other ? script_->other_redirects[h.redirect]
                          : h.command < script_->commands.size()
                              ? script_->commands[h.command].redirects[h.redirect]
                              : throw SyntaxError{"here-document out of place"};
            r.body = body;
            if (!r.body_quoted) {
                // Expansions in an unquoted body are performed: parse them.
                Parser sub(r.body, 0, 0, depth_ + 1, limits_, false);
                sub.read_dq_like(r.body_parts, '\0', true);
            }
        }
    }

    // One word at pos_ (unquoted context). False when no word starts here.
    bool read_word(Word& w) {
        w.begin = pos_ - base_;
        std::size_t start = pos_;
        // <( ... ) and >( ... ) at the start of a word: process substitution.
        while (pos_ < src_.size()) {
            char c = src_[pos_];
            if ((c == '<' || c == '>') && peek(1) == '(' ) {
                if (pos_ != start && !w.parts.empty()) break;
                pos_ += 2;
                Parser sub(src_, pos_, pos_, depth_ + 1, limits_, false);
                sub.arith_failed_ = arith_failed_;
                auto nested = sub.parse_substitution();
                pos_ = sub.pos();
                w.parts.push_back(WordPart{PartKind::process_subst, {}, false, {nested}});
                continue;
            }
            if (is_meta(c)) break;
            if (c == '\\') {
                if (peek(1) == '\n') {
                    pos_ += 2;
                } else if (pos_ + 1 < src_.size()) {
                    add_literal(w.parts, src_[pos_ + 1], true);
                    pos_ += 2;
                } else {
                    add_literal(w.parts, '\\', true);
                    ++pos_;
                }
            } else if (c == '\'') {
                std::size_t close = src_.find('\'', pos_ + 1);
                if (close == std::string_view::npos) throw SyntaxError{"unterminated ' quote"};
                if (w.parts.empty() || w.parts.back().kind != PartKind::literal ||
                    !w.parts.back().quoted)
                    w.parts.push_back(WordPart{PartKind::literal, {}, true, {}});
                w.parts.back().text += src_.substr(pos_ + 1, close - pos_ - 1);
                pos_ = close + 1;
            } else if (c == '"') {
                ++pos_;
                read_dq_like(w.parts, '"', false);
            } else if (c == '$' && peek(1) == '\'') {
                pos_ += 2;
                read_ansi_c(w.parts);
            } else if (c == '$' && peek(1) == '"') {
                pos_ += 2;
                read_dq_like(w.parts, '"', false);
            } else if (c == '$') {
                read_dollar(w.parts, false);
            } else if (c == '`') {
                read_backtick(w.parts, false);
            } else {
                add_literal(w.parts, c, false);
                ++pos_;
            }
        }
        w.end = pos_ - base_;
        if (pos_ == start) return false;
        if (w.parts.empty()) w.parts.push_back(WordPart{PartKind::literal, {}, true, {}});
        return true;
    }

public:
    // Double-quoted text up to `term` ('"'), or a here-document body up to the end
    // (term == '\0', heredoc == true: '"' is plain text there).
    void read_dq_like(std::vector<WordPart>& parts, char term, bool heredoc) {
        Deeper guard(*this);
        while (true) {
            if (pos_ >= src_.size()) {
                if (term == '\0') return;
                throw SyntaxError{"unterminated \" quote"};
            }
            char c = src_[pos_];
            if (c == term && !heredoc) {
                ++pos_;
                if (parts.empty()) parts.push_back(WordPart{PartKind::literal, {}, true, {}});
                return;
            }
            if (c == '\\') {
                char n = peek(1);
                if (n == '\n') {
                    pos_ += 2;
                } else if (n == '$' || n == '`' || n == '\\' || (n == '"' && !heredoc)) {
                    add_literal(parts, n, true);
                    pos_ += 2;
                } else {
                    add_literal(parts, '\\', true);
                    ++pos_;
                }
            } else if (c == '$') {
                read_dollar(parts, true);
            } else if (c == '`') {
                read_backtick(parts, true);
            } else {
                add_literal(parts, c, true);
                ++pos_;
            }
        }
    }

private:
    void read_ansi_c(std::vector<WordPart>& parts) {
        std::string out;
        while (true) {
            if (pos_ >= src_.size()) throw SyntaxError{"unterminated $' quote"};
            char c = src_[pos_];
            if (c == '\'') {
                ++pos_;
                break;
            }
            if (c != '\\' || pos_ + 1 >= src_.size()) {
                out += c;
                ++pos_;
                continue;
            }
            char e = src_[pos_ + 1];
            pos_ += 2;
            switch (e) {
                case 'a': out += '\a'; break;
                case 'b': out += '\b'; break;
                case 'e': case 'E': out += '\x1b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'v': out += '\v'; break;
                case 'c':
                    if (pos_ < src_.size()) {
                        out += static_cast<char>(src_[pos_] & 0x1f);
                        ++pos_;
                    }
                    break;
                case 'x': {
                    int v = 0, n = 0;
                    while (n < 2 && pos_ < src_.size() && hex_value(src_[pos_]) >= 0) {
                        v = v * 16 + hex_value(src_[pos_]);
                        ++pos_;
                        ++n;
                    }
                    if (n == 0) out += "\\x";
                    else out += static_cast<char>(v);
                    break;
                }
                case 'u': case 'U': {
                    int max = e == 'u' ? 4 : 8, n = 0;
                    unsigned long v = 0;
                    while (n < max && pos_ < src_.size() && hex_value(src_[pos_]) >= 0) {
                        v = v * 16 + static_cast<unsigned long>(hex_value(src_[pos_]));
                        ++pos_;
                        ++n;
                    }
                    if (n == 0) {
                        out += '\\';
                        out += e;
                    } else {
                        append_utf8(out, v);
                    }
                    break;
                }
                default:
                    if (e >= '0' && e <= '7') {
                        int v = e - '0', n = 1;
                        while (n < 3 && pos_ < src_.size() && src_[pos_] >= '0' &&
                               src_[pos_] <= '7') {
                            v = v * 8 + (src_[pos_] - '0');
                            ++pos_;
                            ++n;
                        }
                        out += static_cast<char>(v & 0xff);
                    } else if (e == '\\' || e == '\'' || e == '"' || e == '?') {
                        out += e;
                    } else {
                        out += '\\';
                        out += e;
                    }
            }
        }
        // bash cuts a word at a NUL: what follows it would be invisible there, not here.
        if (out.find('\0') != std::string::npos) throw SyntaxError{"a NUL byte inside $'...'"};
        add_literal(parts, out, true);
    }

    // At '$': a parameter, ${...}, $(...), $((...)), or a plain '$'.
    void read_dollar(std::vector<WordPart>& parts, bool in_dq) {
        Deeper guard(*this);
        char n = peek(1);
        const char* here = src_.data() + pos_;
        if (n == '(' && peek(2) == '(' &&
            !arith_failed_->contains(here)) {
            std::size_t save = pos_;
            pos_ += 3;
            WordPart part{PartKind::arithmetic, {}, false, {}};
            if (read_arith_body_maybe(part)) {
                parts.push_back(std::move(part));
                return;
            }
            arith_failed_->insert(here);
            pos_ = save;  // "$( (" : a command substitution starting with a subshell
        }
        if (n == '(') {
            pos_ += 2;
            Parser sub(src_, pos_, pos_, depth_ + 1, limits_, inherit_pipe_ || piped_compound_ > 0 ||
                                                                  connector_ == Connector::pipe);
            sub.arith_failed_ = arith_failed_;
            auto nested = sub.parse_substitution();
            pos_ = sub.pos();
            parts.push_back(WordPart{PartKind::command_subst, {}, false, {nested}});
            return;
        }
        if (n == '{') {
            pos_ += 2;
            if (pos_ < src_.size() && (is_blank(src_[pos_]) || src_[pos_] == '\n' || src_[pos_] == '|'))
                throw SyntaxError{"a ${ command; } substitution"};
            std::size_t start = pos_;
            WordPart part{PartKind::parameter, {}, false, {}};
            std::vector<WordPart> scratch;
            int depth = 0;
            while (true) {
                if (pos_ >= src_.size()) throw SyntaxError{"unterminated ${"};
                char c = src_[pos_];
                if (c == '}' && depth == 0) break;
                if (c == '{') ++depth;
                if (c == '}') --depth;
                if (c == '\\') {
                    pos_ += 2;
                } else if (c == '\'' && !in_dq) {
                    std::size_t close = src_.find('\'', pos_ + 1);
                    if (close == std::string_view::npos) throw SyntaxError{"unterminated ' quote"};
                    pos_ = close + 1;
                } else if (c == '"') {
                    ++pos_;
                    read_dq_like(scratch, '"', false);
                } else if (c == '$' && peek(1) == '\'') {
                    // Its decoded text goes back unquoted: it may spell $( ... ).
                    throw SyntaxError{"$'...' inside ${...}"};
                } else if (c == '$') {
                    read_dollar(scratch, in_dq);
                } else if (c == '`') {
                    read_backtick(scratch, in_dq);
                } else {
                    ++pos_;
                }
            }
            part.text = std::string(src_.substr(start, std::min(pos_, src_.size()) - start));
            ++pos_;
            for (auto& s : scratch)
                for (auto& nested : s.nested) part.nested.push_back(std::move(nested));
            parts.push_back(std::move(part));
            return;
        }
        if (is_name_start(n)) {
            std::size_t start = pos_ + 1;
            pos_ = start;
            while (pos_ < src_.size() && is_name_char(src_[pos_])) ++pos_;
            parts.push_back(WordPart{PartKind::parameter,
                                     std::string(src_.substr(start, pos_ - start)), false, {}});
            return;
        }
        if (is_digit(n) || n == '@' || n == '*' || n == '#' || n == '?' || n == '-' ||
            n == '$' || n == '!') {
            parts.push_back(WordPart{PartKind::parameter, std::string(1, n), false, {}});
            pos_ += 2;
            return;
        }
        add_literal(parts, '$', in_dq);
        ++pos_;
    }

    // After "$((": reads up to the matching "))". False when the first ')' closing the
    // expression is not followed by another (then it was "$( (...) ...)").
    bool read_arith_body_maybe(WordPart& part) {
        std::vector<WordPart> scratch;
        std::size_t start = pos_;
        int depth = 0;
        while (true) {
            if (pos_ >= src_.size()) throw SyntaxError{"unterminated $(("};
            char c = src_[pos_];
            if (c == '(') {
                ++depth;
                ++pos_;
            } else if (c == ')') {
                if (depth == 0) {
                    if (peek(1) != ')') return false;
                    part.text = std::string(src_.substr(start, pos_ - start));
                    pos_ += 2;
                    for (auto& s : scratch)
                        for (auto& nested : s.nested) part.nested.push_back(std::move(nested));
                    return true;
                }
                --depth;
                ++pos_;
            } else if (c == '"') {
                ++pos_;
                read_dq_like(scratch, '"', false);
            } else if (c == '\'') {
                std::size_t close = src_.find('\'', pos_ + 1);
                if (close == std::string_view::npos) throw SyntaxError{"unterminated ' quote"};
                pos_ = close + 1;
            } else if (c == '$') {
                read_dollar(scratch, true);
            } else if (c == '`') {
                read_backtick(scratch, true);
            } else if (c == '\\') {
                pos_ += 2;
            } else {
                ++pos_;
            }
        }
    }

    void read_arith_body(std::vector<WordPart>& parts, std::string_view opener) {
        WordPart part{PartKind::arithmetic, {}, false, {}};
        if (!read_arith_body_maybe(part))
            throw SyntaxError{"unterminated " + std::string(opener)};
        parts.push_back(std::move(part));
    }

    void read_backtick(std::vector<WordPart>& parts, bool in_dq) {
        ++pos_;
        std::string inner;
        while (true) {
            if (pos_ >= src_.size()) throw SyntaxError{"unterminated ` substitution"};
            char c = src_[pos_];
            if (c == '`') {
                ++pos_;
                break;
            }
            if (c == '\\' && pos_ + 1 < src_.size()) {
                char n = src_[pos_ + 1];
                if (n == '$' || n == '`' || n == '\\' || (in_dq && n == '"')) {
                    inner += n;
                    pos_ += 2;
                    continue;
                }
            }
            inner += c;
            ++pos_;
        }
        Parser sub(inner, 0, 0, depth_ + 1, limits_,
                   inherit_pipe_ || piped_compound_ > 0 || connector_ == Connector::pipe);
        auto nested = sub.parse_all();
        parts.push_back(WordPart{PartKind::command_subst, {}, false, {nested}});
    }
};

}  // namespace

bool Word::has_expansion() const {
    return std::any_of(parts.begin(), parts.end(),
                       [](const WordPart& p) { return p.kind != PartKind::literal; });
}

bool Word::has_glob() const {
    // '[' opens a bracket pattern only when an unquoted ']' follows it ("[" alone is test).
    bool open_bracket = false;
    for (const auto& p : parts) {
        if (p.kind != PartKind::literal || p.quoted) continue;
        for (char c : p.text) {
            if (c == '*' || c == '?') return true;
            if (c == '[') open_bracket = true;
            else if (c == ']' && open_bracket) return true;
        }
    }
    return false;
}

bool Word::has_brace() const {
    // An unquoted '{', then an unquoted ',' or "..", then an unquoted '}'.
    int state = 0;
    char prev = '\0';
    for (const auto& p : parts) {
        if (p.kind != PartKind::literal || p.quoted) {
            prev = '\0';
            continue;
        }
        for (char c : p.text) {
            if (c == '{') state = std::max(state, 1);
            else if (state >= 1 && (c == ',' || (c == '.' && prev == '.'))) state = 2;
            else if (c == '}' && state == 2) return true;
            prev = c;
        }
    }
    return false;
}

bool Word::has_tilde() const {
    return !parts.empty() && parts.front().kind == PartKind::literal && !parts.front().quoted &&
           !parts.front().text.empty() && parts.front().text.front() == '~';
}

bool Word::is_quoted() const {
    return std::any_of(parts.begin(), parts.end(), [](const WordPart& p) {
        return p.kind != PartKind::literal || p.quoted;
    });
}

std::optional<std::string> Word::literal() const {
    std::string out;
    for (const auto& p : parts) {
        if (p.kind != PartKind::literal) return std::nullopt;
        out += p.text;
    }
    return out;
}

void Word::collect_nested(std::vector<const Script*>& out) const {
    for (const auto& p : parts)
        for (const auto& s : p.nested) out.push_back(s.get());
}

bool Redirect::writes() const {
    return op == RedirectOp::output || op == RedirectOp::append || op == RedirectOp::clobber ||
           op == RedirectOp::read_write || op == RedirectOp::output_both ||
           op == RedirectOp::append_both;
}

bool is_reserved_word(std::string_view word) {
    return std::find(reserved_words.begin(), reserved_words.end(), word) != reserved_words.end();
}

Result<std::shared_ptr<Script>> parse(std::string_view source, const ParseLimits& limits) {
    try {
        Parser parser(source, 0, 0, 0, limits, false);
        return parser.parse_all();
    } catch (const SyntaxError& e) {
        return Error(errc::invalid_argument, e.what);
    }
}

std::optional<std::string> requote_literal_words(std::string_view source) {
    auto parsed = parse(source);
    if (!parsed) return std::nullopt;
    const Script& script = **parsed;
    struct Edit {
        std::size_t begin, end;
        std::string text;
    };
    std::vector<Edit> edits;
    for (const auto& cmd : script.commands) {
        for (const auto& w : cmd.words) {
            auto lit = w.literal();
            if (!lit || lit->empty() || w.has_glob() || w.has_brace() || w.has_tilde() ||
                is_reserved_word(*lit) || lit->find('\0') != std::string::npos)
                continue;
            std::string q = "'";
            for (char c : *lit) {
                if (c == '\'') q += "'\\''";
                else q += c;
            }
            q += "'";
            edits.push_back({w.begin, w.end, std::move(q)});
        }
    }
    std::sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.begin < b.begin; });
    std::string out;
    std::size_t at = 0;
    for (const auto& e : edits) {
        if (e.begin < at || e.end > source.size()) return std::nullopt;
        out += source.substr(at, e.begin - at);
        out += e.text;
        at = e.end;
    }
    out += source.substr(at);
    return out;
}

}  // namespace guardia::shell
