#include "store_view.hpp"

#include "guardia/deploy/engine_config.hpp"

#include <cstdio>
#include <ctime>

namespace guardia::cli {

bool reader_flag(const std::string& flag, Args& args, ReaderFlags& r) {
    if (flag == "--db")
        r.db = args.value();
    else if (flag == "--config")
        r.config = args.value();
    else if (flag == "--json")
        r.json = true;
    else
        return false;
    return true;
}

std::string ReaderFlags::db_path() const {
    if (!db.empty()) return db;
    // The configuration the other commands would read (--config, GUARDIA_CONFIG,
    // /etc/guardia/guardia.json): its store.db is where their rollouts went.
    Common c;
    c.config_path = config;
    const std::string path = resolve_config_path(c);
    if (path.empty()) return "guardia.db";
    auto cfg = deploy::load_engine_config(path);
    if (!cfg) throw UsageError(cfg.error().message);
    return resolve_db_path(c, *cfg);
}

store::RolloutReader open_reader(const std::string& db) {
    auto r = store::RolloutReader::open(db);
    if (!r) throw UsageError(r.error().message);
    return std::move(*r);
}

std::string utc_time(std::int64_t unix_ms) {
    const std::time_t secs = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  static_cast<int>(unix_ms % 1000));
    return buf;
}

std::string seconds_text(std::int64_t ms) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms) / 1000.0);
    return buf;
}

std::string printable(std::string text) {
    for (auto& c : text)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
    return text;
}

}  // namespace guardia::cli
