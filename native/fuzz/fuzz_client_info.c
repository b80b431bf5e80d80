/*
 * fuzz_client_info.c — libFuzzer harness for the ClientInfo JSON decoder
 * (native/src/client_info.c).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative/include \
 *       native/fuzz/fuzz_client_info.c native/src/client_info.c -o fuzz_client_info
 *   ./fuzz_client_info -max_total_time=60 native/fuzz/corpus/client_info
 *
 * The input is copied into an exactly sized heap buffer so ASan catches any
 * read past len.  Beyond memory safety it checks: the result is LK_OK or
 * LK_ERR_CONFIG, *out is untouched on failure, and appending non-whitespace
 * to an accepted document makes it fail (nothing after the top-level value).
 */
#include <stdlib.h>
#include <string.h>

#include "labkit.h"

static void check(int ok)
{
    if (!ok)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    char *json = malloc(len + 1);
    if (json == NULL)
        return 0;
    memcpy(json, data, len);

    lk_client_info out, before;
    memset(&out, 0xA5, sizeof out);
    before = out;
    int rc = lk_client_info_parse(json, len, &out);
    check(rc == LK_OK || rc == LK_ERR_CONFIG);
    if (rc != LK_OK) {
        check(memcmp(&out, &before, sizeof out) == 0);
    } else {
        check(out.can_ack_pings == 0 || out.can_ack_pings == 1);
        check(out.is_prober == 0 || out.is_prober == 1);
        check(out.has_mesh_key == 0 || out.has_mesh_key == 1);
        json[len] = 'x';
        check(lk_client_info_parse(json, len + 1, &out) == LK_ERR_CONFIG);
    }
    free(json);
    return 0;
}
