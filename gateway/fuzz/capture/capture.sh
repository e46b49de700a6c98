#!/bin/sh
# Re-records the seed sessions in ../corpus from real OpenSSH binaries, without a network:
# sftp -D talks SFTP over pipes to sftp-server, scp -O -S runs `scp -t`/`scp -f` locally;
# relay.py sits in between and records both directions in order. The unit tests in
# gateway/src/file_audit check the paths and sizes used here (/tmp/sftp-seed, /tmp/scp-seed).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
corpus="$here/../corpus"
server=${SFTP_SERVER:-/usr/lib/openssh/sftp-server}

rm -rf /tmp/sftp-seed && mkdir -p /tmp/sftp-seed/remote /tmp/sftp-seed/local
cd /tmp/sftp-seed/local
python3 -c "open('report.txt','w').write(''.join('line %04d of the quarterly report\n' % i for i in range(88))[:1800])"
head -c 700 /dev/zero | tr '\0' x > notes.txt
sftp -B 1024 -D "$here/relay.py $corpus/sftp/session-ops.bin $server" -b "$here/sftp-ops.batch" >/dev/null
sftp -B 1024 -D "$here/relay.py $corpus/sftp/session-reads.bin $server" -b "$here/sftp-reads.batch" >/dev/null

rm -rf /tmp/scp-seed && mkdir -p /tmp/scp-seed/remote /tmp/scp-seed/local/photos/raw /tmp/scp-seed/got
cd /tmp/scp-seed/local
printf 'hello scp\n' > readme.txt
head -c 1500 /dev/zero | tr '\0' p > photos/cat.jpg
printf 'raw\n' > photos/raw/dog.raw
chmod 640 photos/cat.jpg
touch -d '2024-01-02 03:04:05' readme.txt photos/cat.jpg photos/raw/dog.raw photos/raw photos
ssh="$here/fake-ssh.sh"
CAPTURE="$corpus/scp/upload-recursive.bin" scp -O -p -r -S "$ssh" readme.txt photos host:/tmp/scp-seed/remote
CAPTURE="$corpus/scp/download.bin" scp -O -S "$ssh" host:/tmp/scp-seed/remote/photos/cat.jpg /tmp/scp-seed/got/
CAPTURE="$corpus/scp/download-missing.bin" scp -O -S "$ssh" host:/tmp/scp-seed/remote/nope.txt /tmp/scp-seed/got/ 2>/dev/null || true
CAPTURE="$corpus/scp/download-recursive.bin" scp -O -r -S "$ssh" host:/tmp/scp-seed/remote/photos /tmp/scp-seed/got/
echo "recorded into $corpus"
