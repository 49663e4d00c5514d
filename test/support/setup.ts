// Loaded before every suite (.mocharc.cjs `require`). A failed deep equality shows the whole difference: chai cuts
// long arrays to "[ …(117) ]" by default, which hides exactly what a fault test found.
import { config } from 'chai';

config.truncateThreshold = 0;
