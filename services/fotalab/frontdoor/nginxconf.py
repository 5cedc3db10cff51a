"""The front door's nginx configuration, rendered from its settings (pure: no I/O).

nginx serves the content-addressed artifacts (`/artifacts/<sha256>`) straight from the release
store: sendfile, one byte range per request, If-Range, 304 and 412 on its own strong ETag,
immutable caching. A name that is not a SHA-256, or a file that is not in the store, goes to the
update server, which answers with its error that says what to do. Everything else (manifests,
API, DDI, dashboard and its live stream, the seed's /updates/<name>) is proxied to the server,
with the response buffered here, so a slow device link never holds a gunicorn worker.

With TLS the door terminates it: its own certificate, client certificates optional (a browser
has none) but verified against the lab CA and its CRL when presented; a certificate that fails
(another CA, expired, revoked) gets nginx's 400 on every request. Every proxied request carries
headers nginx sets itself, replacing any a client sent: the secret the server checks before it
believes the others (X-Fota-Frontdoor), the verified certificate's CN and serial (empty unless
$ssl_client_verify is SUCCESS) and X-Forwarded-Proto. The CN is cut out of the RFC 2253 subject
by a map that reads it RDN by RDN, escapes included, so an escaped comma inside another
attribute cannot pass for a new `CN=`; a CN with an escaped character passes no identity.
"""
from __future__ import annotations

import json

from .config import FrontDoorConfig

# one line per artifact download nginx served itself, read by the server (server/downloadlog.py)
DOWNLOAD_FORMAT = ('{"time":$msec,"method":"$request_method","uri":"$uri","status":$status,'
                   '"bytes":$body_bytes_sent,"seconds":$request_time}')

TEMPLATE = """\
# Rendered by fota-frontdoor from its environment (services/fotalab/frontdoor): do not edit.
worker_processes {workers};
pid {run}/nginx.pid;
error_log stderr warn;
daemon off;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    log_format fota_download escape=json '{log_format}';
{maps}
    # kept-alive connections to the server: a new one per proxied request costs gunicorn more than a
    # small request itself (docs/server.md). Closed here before gunicorn's own keep-alive (5 s) closes
    # them under a request. nginx resolves the name when it (re)loads its configuration:
    # fota-frontdoor reloads it when the address changes.
    upstream fota_server {{
        server {upstream};
        keepalive 64;
        keepalive_timeout 4s;
    }}

    server {{
        listen {listen}{ssl} backlog=2048;
{tls}
        location ~ "^/artifacts/([0-9a-f]{{64}})$" {{
            root {releases};
            disable_symlinks on;
            try_files /artifacts/$1 @server;
            max_ranges 1;
            # artifacts are immutable (named by their hash): keep their descriptors and checks open
            open_file_cache max=1024 inactive=60s;
            open_file_cache_valid 10s;
            open_file_cache_errors off;
            add_header Cache-Control "public, max-age=31536000, immutable";
            access_log {download_log} fota_download buffer=32k flush=1s;
        }}

        location @server {{
            proxy_pass http://fota_server;
        }}

        location / {{
            proxy_pass http://fota_server;
        }}

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        # set here, whatever the client sent: the server believes the two below only with the secret
        proxy_set_header X-Fota-Frontdoor "{secret}";
        proxy_set_header X-Fota-Client-Identity $fota_client_identity;
        proxy_set_header X-Fota-Client-Serial $fota_client_serial;
        # the dashboard's live stream (the server says X-Accel-Buffering: no) stays open for minutes
        proxy_read_timeout 600s;
        # the server bounds what it accepts itself and says why; nginx must not refuse first
        client_max_body_size 64m;
    }}
}}
"""


# The verified client certificate's CN and serial (nginx's RFC 2253 subject: `CN=device-1`). RDNs
# before the CN are skipped whole, escapes (\x5c is a backslash) included; the CN itself must be
# plain. Without a verified certificate ($ssl_client_verify NONE or FAILED:...) both are empty.
IDENTITY_MAPS = r"""
    map "$ssl_client_verify:$ssl_client_s_dn" $fota_client_identity {
        default "";
        "~^SUCCESS:(?:(?:[^,\x5c]|\x5c.)*,)*CN=(?<fota_cn>[^,+\x5c]+)(?:,|$)" $fota_cn;
    }
    map $ssl_client_verify $fota_client_serial {
        default "";
        SUCCESS $ssl_client_serial;
    }
"""

# TLS 1.2 and 1.3 with nginx's default cipher suites (scripts/bench-server's nginx has the same).
# No shared session cache: a resumed session keeps the verification result of its first
# handshake, and a shared cache outlives a reload, so a certificate revoked since would still
# pass; session tickets (nginx's default) are signed with keys made at each (re)load.
TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {ca};
        ssl_verify_client optional;
"""

# What nginx refuses itself (nginx's codes), said as the server says it: JSON, what was wrong and
# what to do; the text starts as nginx's own does
REFUSALS = {
    "certificate_refused": (495, "The SSL certificate error: the client certificate was refused (not from the lab "
                                 "CA, expired, or revoked); ask the operator for a new one (fota device reprovision "
                                 "<id>), or connect without one to see the dashboard"),
    "plain_http": (497, "The plain HTTP request was sent to HTTPS port: use https:// and trust the lab CA (its "
                        "ca.pem)"),
}


def tls_refusals() -> str:
    lines = []
    for name, (code, message) in REFUSALS.items():
        body = json.dumps({"error": message, "status": 400})
        lines += [f"        error_page {code} =400 @{name};", f"        location @{name} {{",
                  "            default_type application/json;", f"            return 400 '{body}\\n';", "        }"]
    return "\n".join(lines) + "\n"


def render(config: FrontDoorConfig) -> str:
    tls = config.tls
    tls_lines = TLS.format(cert=tls.cert, key=tls.key, ca=tls.ca) + tls_refusals() if tls else ""
    if tls and config.tls_crl:
        tls_lines += f"        ssl_crl {config.tls_crl};\n"
    return TEMPLATE.format(workers=config.workers or "auto", run=config.run_dir, connections=config.connections,
                           log_format=DOWNLOAD_FORMAT, upstream=config.upstream, listen=config.listen,
                           releases=config.releases_dir, download_log=config.download_log, maps=IDENTITY_MAPS,
                           ssl=" ssl" if tls else "", tls=tls_lines, secret=config.secret)
