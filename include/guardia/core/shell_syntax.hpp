// A parser for the POSIX shell subset (plus the bash forms met in ops one-liners) that the
// command sanitizer judges. It does not run or expand anything: it says, for every simple
// command, which parts of each word are literal text and which are expansions, and it parses
// the scripts nested in command substitutions, backticks and here-documents.
//
// Covered: '...', "...", $'...' (ANSI-C escapes decoded), $"...", backslashes and line
// continuations; $name, ${...}, $(...), `...` (with their own quoting), $((...)), <(...) and
// >(...); here-documents (<<, <<-, quoted or not) and here-strings; redirections with fd
// prefixes; pipelines, and-or lists, ; & and newlines; ( ) subshells, { } groups, if/while/
// until/for/select/case, function definitions (f() {...}, function f {...}), [[ ]] and
// comments. Anything it cannot follow (an unterminated quote, an unexpected keyword, nesting
// deeper than a fixed limit) is a parse error: the sanitizer refuses what it cannot read.
//
// Cost: one pass over the input; nested scripts are parsed as they are met, never twice.
#pragma once

#include "guardia/core/error.hpp"

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::shell {

struct Script;

enum class PartKind {
    literal,        // text, already unquoted and unescaped
    parameter,      // $x, ${...}, $1, $@ ...: `text` holds the name or the braced expression
    command_subst,  // $(...) or `...`: `nested` holds the parsed script
    arithmetic,     // $((...)): `nested` holds scripts met inside it (if any)
    process_subst,  // <(...) or >(...)
};

struct WordPart {
    PartKind kind = PartKind::literal;
    std::string text;
    bool quoted = false;  // literal text inside quotes: glob, brace and tilde are not special
    std::vector<std::shared_ptr<Script>> nested;
};

struct Word {
    std::vector<WordPart> parts;
    std::size_t begin = 0, end = 0;  // offsets in the source

    bool has_expansion() const;  // any part that is not literal
    bool has_glob() const;       // unquoted * ? or [
    bool has_brace() const;      // unquoted {a,b} or {a..b}
    bool has_tilde() const;      // unquoted ~ at the start
    bool is_quoted() const;      // any quoted part (a reserved word must be unquoted)
    // The word's text when every part is literal (globs, braces and tilde left as written).
    std::optional<std::string> literal() const;
    // Every script nested in the word's parts, depth first.
    void collect_nested(std::vector<const Script*>& out) const;
};

enum class RedirectOp {
    input,          // <
    output,         // >
    append,         // >>
    clobber,        // >|
    read_write,     // <>
    output_both,    // &> and >& word (not a number)
    append_both,    // &>>
    dup_input,      // <& n / <&-
    dup_output,     // >& n / >&-
    heredoc,        // << and <<-
    herestring,     // <<<
};

struct Redirect {
    int fd = -1;  // explicit fd prefix, -1 when none
    RedirectOp op = RedirectOp::input;
    Word target;  // the file, fd number, here-string, or here-document delimiter
    // Here-document: its body and whether the delimiter was quoted (then the body is
    // literal); an unquoted body's expansions are parsed into body_parts.
    std::string body;
    bool body_quoted = false;
    std::vector<WordPart> body_parts;

    bool writes() const;  // opens a file for writing
};

enum class Connector { none, seq, background, and_if, or_if, pipe };

struct SimpleCommand {
    std::vector<Word> assignments;  // NAME=value words before the command word
    std::vector<Word> words;        // the command word and its arguments
    std::vector<Redirect> redirects;
    std::size_t begin = 0, end = 0;    // source range, for quoting the fragment
    Connector before = Connector::none;  // what joins it to the previous command
    bool stdin_from_pipe = false;
    int function_index = -1;  // index into Script::functions when inside a function body
    int loop_depth = 0;       // inside while/until/for/select bodies
};

struct FunctionDef {
    std::string name;
    std::size_t begin = 0, end = 0;
};

struct Script {
    std::string source;  // the text parsed, kept for fragments
    std::vector<SimpleCommand> commands;  // in source order, nested control flow flattened
    std::vector<FunctionDef> functions;
    // Words that are not commands but may hold substitutions: for/case words, case patterns,
    // redirections of compound commands.
    std::vector<Word> other_words;
    std::vector<Redirect> other_redirects;
};

struct ParseLimits {
    std::size_t max_depth = 48;  // nested substitutions/groups
};

// Parses `source` (a whole script). A failure is Error(errc::invalid_argument) whose message
// says what could not be read and where.
Result<std::shared_ptr<Script>> parse(std::string_view source, const ParseLimits& limits = {});

// Is `word` one of the shell's reserved words ({ } if then ... esac ! [[ ]] function ...)?
bool is_reserved_word(std::string_view word);

// The script with every plain literal word of its top-level commands written again in single
// quotes (`rm -rf /` -> `'rm' '-rf' '/'`); words whose quoting matters to the shell's grammar
// (reserved words, assignments, function names, here-document delimiters, words with globs,
// braces, tilde or expansions) are left as they are. For property tests: a refusal must not
// depend on how literal words are quoted. nullopt when the script does not parse.
std::optional<std::string> requote_literal_words(std::string_view source);

}  // namespace guardia::shell
