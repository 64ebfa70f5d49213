<?php
// "<length> <md5>" of the request body, hashed as a stream so a large upload
// is never held in memory as one string.
$input = fopen('php://input', 'rb');
$context = hash_init('md5');
// With no length given, hash_update_stream reads to the end of the stream.
$length = hash_update_stream($context, $input);
fclose($input);
header('Content-Type: text/plain');
echo $length, ' ', hash_final($context);
