// A prepared statement owning its sqlite3_stmt, and the store's error helper.
#pragma once

#include "guardia/core/error.hpp"

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace guardia::store::detail {

// Only frees: finalizing never touches the database file.
struct FinalizeStatement {
    void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using StatementHandle = std::unique_ptr<sqlite3_stmt, FinalizeStatement>;

// "<what>: <SQLite's message for this connection>", code in sqlite_category().
Error sqlite_error(sqlite3* db, int rc, std::string_view what);

// Bind calls remember their first failure and step() reports it, so a batch of binds needs
// one check. Text is bound without a copy: the bound string must outlive step().
class Statement {
  public:
    // `persistent`: the statement is kept and reused (a hint to SQLite's allocator).
    static Result<Statement> prepare(sqlite3* db, std::string_view sql, bool persistent = false);

    void bind(int index, std::string_view text) noexcept;
    void bind(int index, std::int64_t value) noexcept;
    void bind(int index, std::optional<std::int64_t> value) noexcept;

    int step() noexcept;    // SQLITE_ROW, SQLITE_DONE or an error code
    void reset() noexcept;  // ready to bind and step again

    std::string text(int column) const;
    std::int64_t int64(int column) const noexcept;
    std::optional<std::int64_t> optional_int64(int column) const noexcept;

    sqlite3_stmt* get() const noexcept { return stmt_.get(); }

  private:
    explicit Statement(StatementHandle stmt) : stmt_(std::move(stmt)) {}
    void note(int rc) noexcept {
        if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    }

    StatementHandle stmt_;
    int bind_rc_ = SQLITE_OK;
};

}  // namespace guardia::store::detail
