// Reading the JSON documents people write by hand (inventory, configuration): bounded file
// reads and a strict parse whose errors say where ("nodes.json:3:17: duplicate key 'tier'").
#pragma once

#include "guardia/core/error.hpp"

#include <boost/json/value.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace guardia {

// Reads a regular file of at most `max_bytes`. Errors (errc::local_io_failed) read
// "cannot read <what> '<path>': <reason>".
Result<std::string> read_text_file(const std::string& path, std::uintmax_t max_bytes,
                                   std::string_view what);

// Parses one JSON document. Syntax errors and duplicate keys (which boost::json would
// otherwise resolve silently to the last one) are errc::invalid_argument naming
// "<source>:<line>:<column>".
Result<boost::json::value> parse_json_document(std::string_view text, std::string_view source);

// A value from a document, safe to quote in a message: one line, at most 64 bytes (then
// "..."), valid UTF-8 (messages end up in JSON answers): control characters and bytes that are
// not part of a well-formed UTF-8 character become '?', and a character is never cut in two.
std::string printable(std::string_view s);

}  // namespace guardia
