/* listener.c — the listening socket the relay host hands over: checked, then made
 * non-blocking (every thread's event loop may race for the same accept). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>

#include "common/common.h"
#include "io/io.h"

int lk_io_listener_check(int fd)
{
    int type = 0;
    socklen_t len = sizeof type;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return lk_fail(LK_ERR_CONFIG, "listen_fd\tis %d, not a TCP socket\t", fd);
    return LK_OK;
}

int lk_io_listener_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
        return lk_fail(LK_ERR_SYSTEM, "cannot make listen_fd non-blocking: %s", strerror(errno));
    return LK_OK;
}
