#!/usr/bin/env bash
# Builds mod_libcgi and the example scripts and serves them in the foreground
# on http://127.0.0.1:8080/libcgi-bin/{hello,env,form,counter}.so
# (Ctrl-C stops it), the Rust ones as rust-{hello,http-hello,env,form,counter,json}.so
# and the C++ one as hello-cpp.so.  MPM=prefork|worker|event (default event),
# PORT=8080; SCRIPTS="a.so b.so" serves those too (lib prefix dropped: a
# cargo cdylib's target/release/libfoo.so is served as foo.so).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
extra=()
for so in ${SCRIPTS:-}; do extra+=("$(realpath "$so")"); done
cd "$here"
MPM=${MPM:-event}
PORT=${PORT:-8080}

scripts/install-deps.sh
cargo build --release

run=$here/target/serve-examples
rm -rf "$run"
mkdir -p "$run/libcgi-bin" "$run/run"
for src in examples/*.c; do
    name=$(basename "$src" .c)
    cc -shared -fPIC -O2 -Wall -I include -o "$run/libcgi-bin/.$name.so.tmp" "$src"
    mv -f "$run/libcgi-bin/.$name.so.tmp" "$run/libcgi-bin/$name.so" # atomic install
done
for name in hello http-hello env form counter json; do
    cp "target/release/lib${name//-/_}.so" "$run/libcgi-bin/.rust-$name.so.tmp"
    mv -f "$run/libcgi-bin/.rust-$name.so.tmp" "$run/libcgi-bin/rust-$name.so"
done
c++ -shared -fPIC -O2 -Wall -I include -o "$run/libcgi-bin/.hello-cpp.so.tmp" examples/cpp/hello.cpp
mv -f "$run/libcgi-bin/.hello-cpp.so.tmp" "$run/libcgi-bin/hello-cpp.so"
for so in ${extra[@]+"${extra[@]}"}; do
    name=$(basename "$so")
    name=${name#lib}
    cp "$so" "$run/libcgi-bin/.$name.tmp"
    mv -f "$run/libcgi-bin/.$name.tmp" "$run/libcgi-bin/$name"
done
chmod -R a+rX "$run"
chmod -R go-w "$run"
# The server's user must be able to reach the files.
d=$run
while [[ $d != / ]]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done

user_lines=""
if [[ $(id -u) -eq 0 ]]; then user_lines=$'User www-data\nGroup www-data'; fi
mods=/usr/lib/apache2/modules
cat >"$run/httpd.conf" <<CONF
ServerRoot $run
Listen 127.0.0.1:$PORT
ServerName 127.0.0.1
$user_lines
PidFile $run/run/httpd.pid
DefaultRuntimeDir $run/run
ErrorLog /dev/stderr
LogLevel warn libcgi:info
LoadModule mpm_${MPM}_module $mods/mod_mpm_${MPM}.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule mime_module $mods/mod_mime.so
LoadModule alias_module $mods/mod_alias.so
LoadModule libcgi_module $here/target/release/libmod_libcgi.so
TypesConfig /etc/mime.types
LogFormat "%h %l %u %t \"%r\" %>s %b" common
CustomLog /dev/stdout common
DocumentRoot $run/libcgi-bin
Alias /libcgi-bin/ $run/libcgi-bin/
<Directory $run/libcgi-bin>
    Options +ExecCGI
    AddHandler libcgi-script .so
    Require all granted
</Directory>
CONF
echo "serving http://127.0.0.1:$PORT/libcgi-bin/hello.so (env.so, form.so, counter.so) with the $MPM MPM; Ctrl-C stops" >&2
exec /usr/sbin/apache2 -f "$run/httpd.conf" -DFOREGROUND
