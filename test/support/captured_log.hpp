// A logger whose output a test can read (and check for secrets).
#pragma once

#include <memory>
#include <sstream>
#include <string>

namespace spdlog {
class logger;
}

namespace guardia::test {

struct CapturedLog {
    explicit CapturedLog(const std::string& name = "test");
    std::string text();  // everything logged so far
    std::ostringstream out;
    std::shared_ptr<spdlog::logger> logger;  // debug level and up
};

}  // namespace guardia::test
