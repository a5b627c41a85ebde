#include "captured_log.hpp"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

namespace guardia::test {

CapturedLog::CapturedLog(const std::string& name)
    : logger(std::make_shared<spdlog::logger>(
          name, std::make_shared<spdlog::sinks::ostream_sink_mt>(out))) {
    logger->set_level(spdlog::level::debug);
}

std::string CapturedLog::text() {
    logger->flush();
    return out.str();
}

}  // namespace guardia::test
