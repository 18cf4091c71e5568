/* form.c - a form handled by POST: GET shows the form, POST echoes the
 * decoded fields.  The body arrives as processfunc's argument. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include "libcgi.h"

static void put_html(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '<': lputs("&lt;"); break;
        case '>': lputs("&gt;"); break;
        case '&': lputs("&amp;"); break;
        case '"': lputs("&quot;"); break;
        default: lwrite(&s[i], 1);
        }
    }
}

/* Decodes application/x-www-form-urlencoded text in place; returns length. */
static size_t urldecode(char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+')
            s[o++] = ' ';
        else if (s[i] == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) && isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = { s[i + 1], s[i + 2], 0 };
            s[o++] = (char)strtol(hex, NULL, 16);
            i += 2;
        }
        else
            s[o++] = s[i];
    }
    return o;
}

int processfunc(char *input)
{
    lputs("Content-Type: text/html; charset=utf-8\n\n");
    lputs("<!doctype html><title>form</title>\n");
    if (input == NULL) {
        lputs("<form method=post><input name=name> <input name=comment>"
              " <button>Send</button></form>\n");
        return 0;
    }
    lputs("<dl>\n");
    size_t len = linput_length();
    char *p = input, *end = input + len;
    while (p < end) {
        char *amp = memchr(p, '&', (size_t)(end - p));
        char *fend = amp ? amp : end;
        char *eq = memchr(p, '=', (size_t)(fend - p));
        char *vstart = eq ? eq + 1 : fend;
        size_t klen = urldecode(p, (size_t)((eq ? eq : fend) - p));
        size_t vlen = urldecode(vstart, (size_t)(fend - vstart));
        lputs("<dt>");
        put_html(p, klen);
        lputs("<dd>");
        put_html(vstart, vlen);
        lputs("\n");
        p = fend + 1;
    }
    lputs("</dl>\n");
    return 0;
}
