# Rendered by fprnn; re-run with: gnuplot report_train12.gp
# (from the folder that holds report_train12.dat)
set termoption noenhanced
set datafile separator whitespace
set multiplot layout 2,1 title "length generalisation"
set grid
set key outside right top
set xlabel 'sequence length'
set arrow from 12, graph 0 to 12, graph 1 nohead dashtype 2 lc rgb '#888888'
set label 'train length' at 12, graph 0.95 offset 0.5,0 tc rgb '#666666'
set ylabel 'full-sequence accuracy (%)'
set yrange [0:105]
plot "report_train12.dat" index 0 using 1:2 with linespoints lw 2 title "mb12", "report_train12.dat" index 1 using 1:2 with linespoints lw 2 title "mb12_s1", "report_train12.dat" index 2 using 1:2 with linespoints lw 2 title "mb12_long", "report_train12.dat" index 3 using 1:2 with linespoints lw 2 title "fph12", "report_train12.dat" index 4 using 1:2 with linespoints lw 2 title "fpk12", "report_train12.dat" index 5 using 1:2 with linespoints lw 2 title "fpk12_s1"
set ylabel 'fixed-point iterations (mean)'
set autoscale y
set logscale y
unset label
plot "report_train12.dat" index 0 using 1:3 with linespoints lw 2 title "mb12", "report_train12.dat" index 1 using 1:3 with linespoints lw 2 title "mb12_s1", "report_train12.dat" index 2 using 1:3 with linespoints lw 2 title "mb12_long", "report_train12.dat" index 3 using 1:3 with linespoints lw 2 title "fph12", "report_train12.dat" index 4 using 1:3 with linespoints lw 2 title "fpk12", "report_train12.dat" index 5 using 1:3 with linespoints lw 2 title "fpk12_s1"
unset multiplot
