#pragma once

namespace guardia::cli {

// Each returns the process exit code. Documented in `guardia help` and docs/OPERATIONS.md.
int deploy_command(int argc, char** argv);
int exec_command(int argc, char** argv);
int serve_command(int argc, char** argv);
int audit_command(int argc, char** argv);
int recover_command(int argc, char** argv);
int status_command(int argc, char** argv);
int history_command(int argc, char** argv);
int rollback_command(int argc, char** argv);
int inspect_command(int argc, char** argv);

}  // namespace guardia::cli
