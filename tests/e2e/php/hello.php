<?php
// The smallest page: 13 bytes of body, for the benchmarks and the smoke tests.
echo 'Hello, World!';
